"""Data sets on disk: safetensors shards plus a manifest with a content hash per shard.

Writing is atomic per file (the manifest last, so a half-written data set has no manifest). Reading
verifies every shard's SHA-256 against the manifest before parsing it and names the bad shard.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from protocol.atomic import atomic_write_bytes
from protocol.canonical import sha256_hex
from protocol.data import MANIFEST_NAME, AttributeSpec, DataManifest, ShardInfo
from protocol.errors import IntegrityError

TOKENIZER_NAME = "open_clip:ViT-B-32-bpe"
CONTEXT_LENGTH = 77


@dataclass
class ClipBatch:
    """In-memory clips: frames uint8 N×T×H×W×3, tokens int32 N×L, attributes int64 N×A (or None)."""

    frames: np.ndarray
    tokens: np.ndarray
    captions: list[str]
    attributes: np.ndarray | None = None
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @classmethod
    def concat(cls, parts: list[ClipBatch]) -> ClipBatch:
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            frames=np.concatenate([p.frames for p in parts]),
            tokens=np.concatenate([p.tokens for p in parts]),
            captions=[c for p in parts for c in p.captions],
            attributes=None if any(p.attributes is None for p in parts)
            else np.concatenate([p.attributes for p in parts]),
            names=[n for p in parts for n in p.names],
        )

    def select(self, indices: Iterable[int]) -> ClipBatch:
        idx = np.asarray(list(indices), dtype=np.int64)
        return ClipBatch(
            frames=self.frames[idx],
            tokens=self.tokens[idx],
            captions=[self.captions[i] for i in idx],
            attributes=None if self.attributes is None else self.attributes[idx],
            names=[self.names[i] for i in idx] if self.names else [],
        )


@functools.cache
def _tokenizer():  # loading the BPE merges takes ~0.3 s: once per process
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def tokenize(captions: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """The real open_clip BPE tokenizer (ships with the package, works offline)."""
    return _tokenizer()(captions, context_length=context_length).numpy().astype(np.int32)


def encode_shard(batch: ClipBatch) -> bytes:
    tensors = {"frames": np.ascontiguousarray(batch.frames, dtype=np.uint8),
               "tokens": np.ascontiguousarray(batch.tokens, dtype=np.int32)}
    if batch.attributes is not None:
        tensors["attributes"] = np.ascontiguousarray(batch.attributes, dtype=np.int64)
    meta = {"captions": json.dumps(batch.captions, ensure_ascii=False)}
    if batch.names:
        meta["names"] = json.dumps(batch.names, ensure_ascii=False)
    return st_save(tensors, metadata=meta)


def decode_shard(data: bytes, *, label: str) -> ClipBatch:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        captions = json.loads(meta["captions"])
        names = json.loads(meta["names"]) if "names" in meta else []
        frames, tokens = tensors["frames"], tensors["tokens"]
    except (SafetensorError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise IntegrityError(f"shard {label} cannot be parsed: {e}") from None
    if frames.ndim != 5 or frames.shape[-1] != 3 or tokens.shape[0] != frames.shape[0] != len(captions):
        raise IntegrityError(f"shard {label} has inconsistent shapes")
    return ClipBatch(frames, tokens, captions, tensors.get("attributes"), names)


class ShardWriter:
    """Accumulates clips and writes fixed-size shards; `finish()` writes the manifest last."""

    def __init__(self, out: Path, *, clips_per_shard: int = 256) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)  # an unfinished rewrite must not look complete
        self.clips_per_shard = clips_per_shard
        self.shards: list[ShardInfo] = []

    def write(self, batch: ClipBatch) -> ShardInfo:
        data = encode_shard(batch)
        name = f"shard-{len(self.shards):05d}.safetensors"
        atomic_write_bytes(self.out / name, data)
        info = ShardInfo(file=name, sha256=sha256_hex(data), clips=len(batch), bytes=len(data))
        self.shards.append(info)
        return info

    def finish(self, *, source: str, frames: int, height: int, width: int, fps: float,
               attributes: tuple[AttributeSpec, ...] = (), generator: dict | None = None) -> DataManifest:
        if not self.shards:
            raise IntegrityError("no clips were written: the data set would be empty")
        manifest = DataManifest(
            source=source, frames=frames, height=height, width=width, fps=fps, tokenizer=TOKENIZER_NAME,
            context_length=CONTEXT_LENGTH, attributes=attributes, generator=generator or {},
            shards=tuple(self.shards), total_clips=sum(s.clips for s in self.shards),
        )
        keep = {s.file for s in self.shards}
        for stale in self.out.glob("shard-*.safetensors"):
            if stale.name not in keep:
                stale.unlink()
        atomic_write_bytes(self.out / MANIFEST_NAME, manifest.to_bytes())
        return manifest


def iter_shards(directory: Path, manifest: DataManifest | None = None) -> Iterator[tuple[ShardInfo, ClipBatch]]:
    """Yield each shard after checking its size and SHA-256 against the manifest."""
    directory = Path(directory)
    manifest = manifest or DataManifest.load(directory)
    for info in manifest.shards:
        path = directory / info.file
        if not path.is_file():
            raise IntegrityError(f"shard {info.file} is missing from {directory}")
        data = path.read_bytes()
        if len(data) != info.bytes or sha256_hex(data) != info.sha256:
            raise IntegrityError(f"shard {info.file} is corrupt: its hash does not match the manifest")
        batch = decode_shard(data, label=info.file)
        if len(batch) != info.clips:
            raise IntegrityError(f"shard {info.file} holds {len(batch)} clips, the manifest says {info.clips}")
        yield info, batch


def load_dataset(directory: Path) -> tuple[DataManifest, ClipBatch]:
    """Load and verify a whole data set into memory (clips in manifest order)."""
    manifest = DataManifest.load(directory)
    return manifest, ClipBatch.concat([b for _, b in iter_shards(directory, manifest)])
