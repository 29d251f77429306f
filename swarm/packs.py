"""Packs: fetched content kept as its assembled files (`packs/<root cid>/<name>`), written once, in place.

A download writes every verified chunk straight to its offsets in the final files of a partial pack, so the
bytes hit the disk once (no chunk copies plus an assembly pass: that doubled the disk work and halved the
throughput). A partial pack records the chunks it holds in an append-only `.have` list, written after their
bytes, which is what makes a download resumable after a crash. Finishing is one rename. The downloader
streams each chunk in (`begin`/`feed`/`commit`): pieces are hashed and written as they arrive, and the chunk
is recorded only once its whole sha-256 matches its CID. Complete packs also
serve their chunks to peers, read by offset.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from pathlib import Path

from protocol.errors import IntegrityError
from protocol.swarm_cas import CasManifest, parse_cid, verify

HAVE = ".have"


def _layout(manifest: CasManifest) -> dict[str, list[tuple[str, int]]]:
    """chunk CID → every (relative file, offset) where its bytes go (identical chunks are fetched once)."""
    where: dict[str, list[tuple[str, int]]] = {}
    for entry in manifest.entries:
        rel = entry.path if manifest.kind == "dir" else ""
        offset = 0
        for c in entry.chunks:
            where.setdefault(c.cid, []).append((rel, offset))
            offset += c.size
    return where


class PackWriter:
    """A partial pack being filled; `has`/`write` make it a sink for swarm.cas_transfer.fetch_chunks."""

    def __init__(self, packs: PackStore, root_cid: str, manifest: CasManifest):
        self.packs, self.root_cid, self.manifest = packs, root_cid, manifest
        self.dir = packs.partial_path(root_cid)
        self.base = self.dir / manifest.name
        self.layout = _layout(manifest)
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        for entry in manifest.entries:  # create (or keep, when resuming) every file at its final size
            f = self._file(entry.path if manifest.kind == "dir" else "")
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "ab") as fh:
                if fh.tell() != entry.size:
                    fh.truncate(entry.size)
        try:
            lines = (self.dir / HAVE).read_text().split()
        except FileNotFoundError:
            lines = []
        self.have = {c for c in lines if c in self.layout}
        self._sizes = manifest.unique_chunks()

    def _file(self, rel: str) -> Path:
        return self.base / rel if rel else self.base

    def has(self, cid: str) -> bool:
        return cid in self.have

    def write(self, cid: str, data: bytes) -> None:
        """Verify, write to every place the chunk belongs, then record it (in that order: crash-safe)."""
        verify(cid, data)
        for rel, offset in self.layout[cid]:
            fd = os.open(self._file(rel), os.O_WRONLY)
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.pwrite(fd, view[done:], offset + done)
            finally:
                os.close(fd)
        self._record(cid)

    def begin(self, cid: str, size: int) -> PackChunk:
        """Receive one chunk piece by piece (`feed`, then `commit`): each piece is hashed and written in place
        as it arrives, and the chunk is recorded only when `commit` finds the whole chunk matches its CID."""
        if size != self._sizes.get(cid):
            raise IntegrityError(f"{cid} is not a chunk of {self.root_cid} of {size} bytes")
        return PackChunk(self, cid, size)

    def _record(self, cid: str) -> None:
        with self._lock:
            with open(self.dir / HAVE, "a") as fh:
                fh.write(cid + "\n")
            self.have.add(cid)

    def finish(self) -> Path:
        missing = set(self.layout) - self.have
        if missing:
            raise IntegrityError(f"pack {self.root_cid} is missing {len(missing)} chunks")
        (self.dir / HAVE).unlink(missing_ok=True)
        final = self.packs.path(self.root_cid)
        os.replace(self.dir, final)
        self.packs.index(self.root_cid, self.manifest)
        return final / self.manifest.name


class PackChunk:
    """One chunk being received into a PackWriter. Pieces are written to the chunk's places as they come
    (unrecorded bytes are harmless: a crash or a mismatch leaves the chunk out of `.have`, so it is fetched
    again and overwritten); `commit` verifies the sha-256 of everything fed against the CID, then records it.
    Not thread-safe: feed, commit and abort one chunk from one thread, in order."""

    def __init__(self, writer: PackWriter, cid: str, size: int):
        self.writer, self.cid, self.size = writer, cid, size
        self.digest = parse_cid(cid).raw_digest
        self.hash = hashlib.sha256()
        self.pos = 0
        self.fds: list[tuple[int, int]] = []
        try:
            for rel, offset in writer.layout[cid]:
                self.fds.append((os.open(writer._file(rel), os.O_WRONLY), offset))
        except BaseException:
            self.abort()
            raise

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.pos + n > self.size:
            raise IntegrityError(f"peer sent more than the {self.size} bytes of {self.cid}")
        self.hash.update(data)
        view = memoryview(data)
        for fd, offset in self.fds:
            done = 0
            while done < n:
                done += os.pwrite(fd, view[done:], offset + self.pos + done)
        self.pos += n

    def commit(self) -> None:
        try:
            if self.pos != self.size or self.hash.digest() != self.digest:
                raise IntegrityError(f"bytes do not match {self.cid}")
        finally:
            self.abort()
        self.writer._record(self.cid)

    def abort(self) -> None:
        fds, self.fds = self.fds, []
        for fd, _ in fds:
            os.close(fd)


class PackStore:
    """`root/packs/`: complete packs by root CID, partial ones as `.<cid>.partial`, and a chunk index."""

    def __init__(self, root: Path | str):
        self.dir = Path(root) / "packs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[Path, int, int]] = {}
        self._lock = threading.Lock()

    def path(self, root_cid: str) -> Path:
        parse_cid(root_cid)
        return self.dir / root_cid

    def partial_path(self, root_cid: str) -> Path:
        parse_cid(root_cid)
        return self.dir / f".{root_cid}.partial"

    def complete(self, root_cid: str) -> bool:
        return self.path(root_cid).is_dir()

    def roots(self) -> list[str]:
        return [p.name for p in self.dir.iterdir() if not p.name.startswith(".") and p.is_dir()]

    def index(self, root_cid: str, manifest: CasManifest) -> None:
        """Make a complete pack's chunks servable."""
        base = self.path(root_cid) / manifest.name
        with self._lock:
            for entry in manifest.entries:
                offset = 0
                f = base / entry.path if manifest.kind == "dir" else base
                for c in entry.chunks:
                    self._index.setdefault(c.cid, (f, offset, c.size))
                    offset += c.size

    def locate(self, cid: str) -> tuple[Path, int, int] | None:
        """Where a complete pack holds chunk `cid`: (file, offset, size), or None."""
        with self._lock:
            return self._index.get(cid)

    def read(self, cid: str) -> bytes:
        """A chunk's bytes from a complete pack (unverified: requesters verify); KeyError if none has it."""
        with self._lock:
            loc = self._index.get(cid)
        if loc is None:
            raise KeyError(cid)
        path, offset, size = loc
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), size, offset)
        except FileNotFoundError:
            raise KeyError(cid) from None
        if len(data) != size:
            raise KeyError(cid)
        return data

    def size(self, root_cid: str) -> int:
        return sum(p.stat().st_size for p in self.path(root_cid).rglob("*") if p.is_file())

    def remove(self, root_cid: str) -> None:
        with self._lock:
            self._index = {c: loc for c, loc in self._index.items()
                           if not loc[0].is_relative_to(self.path(root_cid))}
        shutil.rmtree(self.path(root_cid), ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.partial_path(root_cid), ignore_errors=True)
