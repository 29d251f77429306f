"""The local blob store: verified chunks and manifests on disk under their CIDs, pins, and garbage collection.

Every blob is written to a temporary file and renamed into place, so a crashed process leaves either a
complete blob or none; leftovers of interrupted writes are removed when the store opens. Blobs are named by
their hash, so a blob present is a blob finished: that is what makes downloads resumable. Blobs are not
fsynced one by one (that halves transfer speed); instead they are self-verifying: `read(verify=True)` drops
a blob whose bytes no longer match its name (a torn write after an OS crash) and reports it missing, so it
is fetched again. The pin file, which cannot be re-derived, is written with fsync (protocol.atomic).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from protocol.atomic import atomic_write_bytes
from protocol.errors import IntegrityError
from protocol.swarm_cas import CasManifest, decode_manifest, parse_cid, verify

log = logging.getLogger(__name__)


class PinFile(BaseModel):
    pins: dict[str, float] = {}  # root CID → pinned-at


class BlobStore:
    """Files under `root/blobs/`, pins in `root/pins.json`. Thread-safe for the operations below."""

    def __init__(self, root: Path | str, limit_bytes: int | None = None):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self._pins_path = self.root / "pins.json"
        self._lock = threading.RLock()
        self._recover()

    def _recover(self) -> None:
        """Drop temporary files left by a crash mid-write (finished blobs are renamed into place atomically)."""
        for tmp in self.blobs.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def path(self, cid: str) -> Path:
        parse_cid(cid)  # refuses anything that could escape the directory
        return self.blobs / cid

    def has(self, cid: str) -> bool:
        return self.path(cid).is_file()

    def read(self, cid: str, *, verify_bytes: bool = True) -> bytes:
        """The blob's bytes; KeyError if absent (or, with `verify_bytes`, corrupt: it is then deleted)."""
        path = self.path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(cid) from None
        if verify_bytes:
            try:
                verify(cid, data)
            except IntegrityError:
                log.error("blob %s is corrupt on disk; deleting it so that it is fetched again", cid)
                path.unlink(missing_ok=True)
                raise KeyError(cid) from None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for garbage collection order
        return data

    def write(self, cid: str, data: bytes) -> None:
        """Verify `data` against `cid`, then store it atomically (no-op if already present)."""
        verify(cid, data)
        path = self.path(cid)
        if path.exists():
            return
        tmp = path.with_name(f".{cid}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def manifest(self, cid: str) -> CasManifest:
        return decode_manifest(cid, self.read(cid))

    # ---- pins and garbage collection ----

    def pins(self) -> dict[str, float]:
        with self._lock:
            try:
                return PinFile.model_validate_json(self._pins_path.read_bytes()).pins
            except FileNotFoundError:
                return {}
            except ValidationError:
                log.error("%s is corrupt; treating nothing as pinned until it is rewritten", self._pins_path)
                return {}

    def pin(self, cid: str) -> None:
        parse_cid(cid)
        with self._lock:
            pins = self.pins()
            pins[cid] = time.time()
            atomic_write_bytes(self._pins_path, PinFile(pins=pins).model_dump_json().encode())

    def unpin(self, cid: str) -> None:
        with self._lock:
            pins = self.pins()
            if pins.pop(cid, None) is not None:
                atomic_write_bytes(self._pins_path, PinFile(pins=pins).model_dump_json().encode())

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.blobs.iterdir() if not p.name.startswith("."))

    def live_set(self) -> set[str]:
        """Blobs that pins keep alive: each pinned manifest and its chunks."""
        live: set[str] = set()
        for root in self.pins():
            live.add(root)
            try:
                live.update(self.manifest(root).unique_chunks())
            except (KeyError, IntegrityError):
                continue  # pinned but not (fully) here yet: its chunks present stay, see gc()
        return live

    def gc(self, limit_bytes: int | None = None, *, keep: set[str] | frozenset[str] = frozenset()) -> int:
        """Delete unpinned blobs, least recently used first, until the store fits in `limit_bytes` (default:
        the store's limit; None: delete every unpinned blob). `keep` protects blobs of downloads in flight.
        Returns the bytes freed."""
        limit = self.limit_bytes if limit_bytes is None else limit_bytes
        with self._lock:
            live = self.live_set() | set(keep)
            entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.blobs.iterdir()
                       if not p.name.startswith(".")]
            total = sum(size for _, size, _ in entries)
            freed = 0
            for _, size, p in sorted(entries):
                if limit is not None and total - freed <= limit:
                    break
                if p.name in live:
                    continue
                p.unlink(missing_ok=True)
                freed += size
            return freed

