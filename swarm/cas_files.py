"""Files ↔ blobs: chunk a file or directory into the blob store (→ manifest), and write a manifest's files
back out. Local disk work only; swarm.cas runs it in a thread."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from protocol.errors import IntegrityError, ParisError
from protocol.swarm_cas import DEFAULT_CHUNK_SIZE, CasManifest, path_manifest
from swarm.blobstore import BlobStore
from swarm.cas_transfer import FetchError


def import_path(blobs: BlobStore, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> CasManifest:
    """Chunk a file or a directory tree into `blobs` and store its manifest; returns the manifest."""
    if not (path.is_file() or path.is_dir()):
        raise ParisError(f"{path} is not a file or directory")
    manifest = path_manifest(path, chunk_size, on_chunk=blobs.write)
    blobs.write(manifest.cid, manifest.to_bytes())
    return manifest


def export_path(blobs: BlobStore, manifest: CasManifest, out_dir: Path,
                fresh: set[str] | frozenset[str] = frozenset()) -> Path:
    """Write the files from chunks; the result appears at once (rename) or not at all. Chunks verified by
    this download (`fresh`) are copied in the kernel; older ones are read and verified first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / manifest.name
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.name}.", dir=out_dir))
    try:
        for entry in manifest.entries:
            rel = entry.path if manifest.kind == "dir" else manifest.name
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                for c in entry.chunks:
                    if c.cid in fresh:
                        _copy_into(blobs.path(c.cid), out, c.size)
                    else:
                        try:
                            out.write(blobs.read(c.cid))
                        except KeyError:
                            raise FetchError(f"chunk {c.cid} went missing or was corrupt; retry") from None
        src = staging / manifest.name if manifest.kind == "file" else staging
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(src, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _copy_into(src: Path, out, size: int) -> None:
    """Append `size` bytes of `src` to the open file `out`, in the kernel where the platform allows it."""
    with open(src, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            raise IntegrityError(f"stored chunk {src.name} has the wrong size")
        out.flush()
        left = size
        try:
            while left:
                n = os.copy_file_range(f.fileno(), out.fileno(), left)
                if n == 0:
                    break
                left -= n
        except (AttributeError, OSError):
            f.seek(size - left)
            shutil.copyfileobj(f, out)
            left = 0
        if left:
            raise IntegrityError(f"stored chunk {src.name} is truncated")


def copy_out(src: Path, out_dir: Path) -> Path:
    """Copy a file or tree to `out_dir/<name>`; the result appears at once (rename) or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / src.name
    staging = Path(tempfile.mkdtemp(prefix=f".{src.name}.", dir=out_dir))
    try:
        target = staging / src.name
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copyfile(src, target)  # copy_file_range/sendfile on Linux
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
