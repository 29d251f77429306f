"""Content addressing of files and directories: CIDv1 chunk ids, the manifest that lists them, and the small
wire frames of the chunk transfer protocol. Pure data and functions; I/O lives in swarm/.

A chunk's CID is CIDv1(raw, sha2-256) of its bytes; the root CID of a put is CIDv1(json, sha2-256) of the
manifest's canonical JSON. Both are verifiable by any multiformats library.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from multiformats import CID, multihash
from pydantic import Field, ValidationError, model_validator

from protocol.canonical import canonical_json
from protocol.data import Frozen
from protocol.errors import IntegrityError
from protocol.swarm_records import CID_PATTERN

DEFAULT_CHUNK_SIZE = 4 << 20
MAX_CHUNK_SIZE = 16 << 20
MAX_MANIFEST_BYTES = 4 << 20  # manifests travel in one frame
MAX_ENTRIES = 100_000



def chunk_cid(data: bytes) -> str:
    return str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


def manifest_cid(data: bytes) -> str:
    return str(CID("base32", 1, "json", multihash.digest(data, "sha2-256")))


def parse_cid(text: str) -> CID:
    """Decode a CID we accept (v1, raw or json codec, sha2-256); IntegrityError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(CID_PATTERN, text):
        raise IntegrityError(f"not a paris CID: {str(text)[:80]!r}")
    return _parse_cid(text)


@functools.lru_cache(maxsize=8192)
def _parse_cid(text: str) -> CID:  # decoding costs ~0.5 ms (multiformats validates types); CIDs are immutable
    try:
        cid = CID.decode(text)
    except (ValueError, KeyError) as e:
        raise IntegrityError(f"not a CID: {text[:80]!r} ({e})") from None
    if cid.version != 1 or cid.codec.name not in ("raw", "json") or cid.hashfun.name != "sha2-256":
        raise IntegrityError(f"unsupported CID {text[:80]!r}: need CIDv1 raw/json with sha2-256")
    return cid


def verify(cid: str, data: bytes) -> None:
    """Raise IntegrityError unless `data` hashes to `cid`."""
    if parse_cid(cid).raw_digest != hashlib.sha256(data).digest():
        raise IntegrityError(f"bytes do not match {cid}")


class ChunkRef(Frozen):
    cid: str = Field(pattern=rf"^{CID_PATTERN}$")
    size: int = Field(ge=0, le=MAX_CHUNK_SIZE)


class FileEntry(Frozen):
    """One file of the put, at a relative POSIX path, as an ordered list of chunks."""

    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0)
    chunks: tuple[ChunkRef, ...]

    @model_validator(mode="after")
    def _check(self) -> FileEntry:
        safe_relative_path(self.path)
        if sum(c.size for c in self.chunks) != self.size:
            raise ValueError(f"chunk sizes of {self.path} do not add up to {self.size}")
        return self


class CasManifest(Frozen):
    """What a root CID names: a single file or a directory tree (empty directories are not kept)."""

    format: Literal["paris-cas/1"] = "paris-cas/1"
    kind: Literal["file", "dir"]
    name: str = Field(min_length=1, max_length=255)
    chunk_size: int = Field(ge=1, le=MAX_CHUNK_SIZE)
    total_bytes: int = Field(ge=0)
    entries: tuple[FileEntry, ...] = Field(max_length=MAX_ENTRIES)

    @model_validator(mode="after")
    def _check(self) -> CasManifest:
        safe_relative_path(self.name)
        if "/" in self.name:
            raise ValueError("name must be a single path component")
        if self.kind == "file" and (len(self.entries) != 1 or self.entries[0].path != self.name):
            raise ValueError("a file manifest has exactly one entry, named like the manifest")
        paths = [e.path for e in self.entries]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate paths in manifest")
        if sum(e.size for e in self.entries) != self.total_bytes:
            raise ValueError("entry sizes do not add up to total_bytes")
        return self

    def to_bytes(self) -> bytes:
        return canonical_json(self)

    @property
    def cid(self) -> str:
        return manifest_cid(self.to_bytes())

    def part(self, files: tuple[str, ...] | list[str]) -> CasManifest:
        """The manifest of some files of this directory: a CID of its own (anyone derives it from this one),
        whose chunks are this one's, so that whoever serves the whole serves the part. Lets a sampler fetch a
        checkpoint's sampling weights without its training state."""
        if self.kind != "dir":
            raise IntegrityError(f"{self.name} is a file: it has no parts")
        have = {e.path: e for e in self.entries}
        missing = [f for f in files if f not in have]
        if missing:
            raise IntegrityError(f"{self.cid} holds no {', '.join(missing)}")
        entries = tuple(have[f] for f in sorted(set(files)))
        return CasManifest(kind="dir", name=self.name, chunk_size=self.chunk_size,
                           total_bytes=sum(e.size for e in entries), entries=entries)

    def unique_chunks(self) -> dict[str, int]:
        """chunk CID → size, each once (identical chunks are stored and fetched once)."""
        out: dict[str, int] = {}
        for e in self.entries:
            for c in e.chunks:
                out.setdefault(c.cid, c.size)
        return out


def path_manifest(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  on_chunk: Callable[[str, bytes], None] | None = None) -> CasManifest:
    """The manifest (so the root CID) of a file or directory tree, as a put would make it; `on_chunk(cid,
    bytes)` receives every chunk (the store writes them). Lets anyone compute a folder's CID without a store."""
    path = Path(path)
    if path.is_file():
        files, kind = [(path, path.name)], "file"
    elif path.is_dir():
        files = [(p, p.relative_to(path).as_posix()) for p in sorted(path.rglob("*"))
                 if p.is_file() and not p.is_symlink()]
        kind = "dir"
    else:
        raise IntegrityError(f"{path} is not a file or directory")
    entries = []
    for src, rel in files:
        chunks = []
        with open(src, "rb") as f:
            while block := f.read(chunk_size):
                cid = chunk_cid(block)
                if on_chunk is not None:
                    on_chunk(cid, block)
                chunks.append(ChunkRef(cid=cid, size=len(block)))
        entries.append(FileEntry(path=rel, size=sum(c.size for c in chunks), chunks=tuple(chunks)))
    return CasManifest(kind=kind, name=path.name, chunk_size=chunk_size, total_bytes=sum(e.size for e in entries),
                       entries=tuple(entries))


def path_cid(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """The root CID that putting `path` into a content store yields."""
    return path_manifest(path, chunk_size).cid


def decode_manifest(cid: str, data: bytes) -> CasManifest:
    """Verify that `data` is the manifest named by `cid` and parse it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"manifest {cid} is over {MAX_MANIFEST_BYTES} bytes")
    if parse_cid(cid).codec.name != "json":
        raise IntegrityError(f"{cid} names a raw chunk, not a manifest")
    verify(cid, data)
    try:
        return CasManifest.model_validate_json(data)
    except ValidationError as e:
        raise IntegrityError(f"manifest {cid} is malformed: {e.errors()[0]['msg']}") from None


def safe_relative_path(path: str) -> PurePosixPath:
    """A path that stays inside the output directory on every OS; ValueError otherwise."""
    p = PurePosixPath(path)
    if (path != str(p) or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts)
            or "\\" in path or "\x00" in path or ":" in p.parts[0]):
        raise ValueError(f"unsafe path in manifest: {path!r}")
    return p


# ---- wire frames of the chunk protocol ----------------------------------------------------------------------

class ChunkRequest(Frozen):
    """Client → server on a long-lived stream: `u32 length` + this as JSON. The server answers each CID in
    order, back to back, so a batch keeps the stream busy without a round trip per chunk."""

    cids: tuple[Annotated[str, Field(pattern=rf"^{CID_PATTERN}$")], ...] = Field(min_length=1, max_length=16)


MAX_REQUEST_BYTES = 4096
STATUS_OK, STATUS_MISSING, STATUS_BAD_REQUEST = 0, 1, 2
# server → client, per requested CID: u8 status + u64 length + `length` bytes (empty unless status is OK)
