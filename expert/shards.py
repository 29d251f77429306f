"""Data sets on disk: safetensors shards plus a manifest with a content hash per shard.

Writing is atomic per file (the manifest last, so a half-written data set has no manifest). Reading
verifies every shard's SHA-256 against the manifest before parsing it and names the bad shard.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from expert.shard_rows import LazyRows, tensor_location
from protocol.atomic import atomic_write_bytes
from protocol.canonical import file_sha256, sha256_hex
from protocol.data import MANIFEST_NAME, AttributeSpec, DataManifest, LatentInfo, ShardInfo, TextStatesInfo
from protocol.errors import IntegrityError

TOKENIZER_NAME = "open_clip:ViT-B-32-bpe"
CONTEXT_LENGTH = 77


@dataclass
class ClipBatch:
    """In-memory clips: frames uint8 N×T×H×W×3 (None in a latent data set), tokens int32 N×L, attributes
    int64 N×A (or None), and for latent data sets `latents` float16 N×C×T×H×W (the VAE's, encoded once).
    `spans`: for prepared real clips, the (start, end) seconds of its source each clip covers (empty else).
    `text_states` (N×L×D float16) and `text_null` (L×D): each caption's text-encoder states and the empty
    caption's, computed once at `run init` when the run's encoder is stored (protocol.data.TextStatesInfo)."""

    frames: np.ndarray | None
    tokens: np.ndarray
    captions: list[str]
    attributes: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    latents: np.ndarray | None = None
    spans: list[tuple[float, float]] = field(default_factory=list)
    text_states: np.ndarray | LazyRows | None = None
    text_null: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def concat(cls, parts: list[ClipBatch]) -> ClipBatch:
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({p.frames is None for p in parts}) > 1 or len({p.latents is None for p in parts}) > 1:
            raise ValueError("cannot concatenate frames with latents")
        if len({p.text_states is None for p in parts}) > 1:
            raise ValueError("cannot concatenate clips with text states and clips without")
        return cls(
            frames=None if parts[0].frames is None else _cat([p.frames for p in parts]),
            tokens=np.concatenate([p.tokens for p in parts]),
            captions=[c for p in parts for c in p.captions],
            attributes=None if any(p.attributes is None for p in parts)
            else np.concatenate([p.attributes for p in parts]),
            names=[n for p in parts for n in p.names],
            latents=None if parts[0].latents is None else _cat([p.latents for p in parts]),
            spans=[s for p in parts for s in p.spans] if all(p.spans for p in parts) else [],
            text_states=None if parts[0].text_states is None else _cat([p.text_states for p in parts]),
            text_null=parts[0].text_null,
        )

    def select(self, indices: Iterable[int]) -> ClipBatch:
        idx = np.asarray(list(indices), dtype=np.int64)
        return ClipBatch(
            frames=None if self.frames is None else _take(self.frames, idx),
            tokens=self.tokens[idx],
            captions=[self.captions[i] for i in idx],
            attributes=None if self.attributes is None else self.attributes[idx],
            names=[self.names[i] for i in idx] if self.names else [],
            latents=None if self.latents is None else _take(self.latents, idx),
            spans=[self.spans[i] for i in idx] if self.spans else [],
            text_states=None if self.text_states is None else _take(self.text_states, idx),
            text_null=self.text_null,
        )

    @property
    def lazy(self) -> bool:
        """Whether the frames / latents stay on disk until a batch reads them (`open_dataset`)."""
        return isinstance(self.frames, LazyRows) or isinstance(self.latents, LazyRows)

    def pixels(self, what: str = "this") -> np.ndarray:
        """The frames; a one-line error for a latent data set (which keeps none)."""
        if self.frames is None:
            raise IntegrityError(f"{what} data set holds latents, not frames")
        return self.frames


def _take(rows, idx: np.ndarray):
    return rows.select(idx) if isinstance(rows, LazyRows) else rows[idx]


def _cat(parts: list):
    if all(isinstance(p, LazyRows) for p in parts):
        return LazyRows.concat(parts)
    return np.concatenate([np.asarray(p) for p in parts])


@functools.cache
def _tokenizer():  # loading the BPE merges takes ~0.3 s: once per process
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def tokenize(captions: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """The real open_clip BPE tokenizer (ships with the package, works offline)."""
    return _tokenizer()(captions, context_length=context_length).numpy().astype(np.int32)


def encode_shard(batch: ClipBatch) -> bytes:
    tensors = {"tokens": np.ascontiguousarray(batch.tokens, dtype=np.int32)}
    if batch.frames is not None:
        tensors["frames"] = np.ascontiguousarray(batch.frames, dtype=np.uint8)
    if batch.latents is not None:
        tensors["latents"] = np.ascontiguousarray(batch.latents, dtype=np.float16)
    if batch.attributes is not None:
        tensors["attributes"] = np.ascontiguousarray(batch.attributes, dtype=np.int64)
    if batch.text_states is not None:
        assert batch.text_null is not None
        tensors["text_states"] = np.ascontiguousarray(batch.text_states, dtype=np.float16)
        tensors["text_null"] = np.ascontiguousarray(batch.text_null, dtype=np.float16)
    meta = {"captions": json.dumps(batch.captions, ensure_ascii=False)}
    if batch.names:
        meta["names"] = json.dumps(batch.names, ensure_ascii=False)
    if batch.spans:
        meta["spans"] = json.dumps([[float(a), float(b)] for a, b in batch.spans])
    data = st_save(tensors, metadata=meta)
    return _sorted_metadata(data) if len(meta) > 1 else data


def _sorted_metadata(data: bytes) -> bytes:
    """The same file with its metadata keys in sorted order. safetensors writes them from a Rust HashMap,
    whose order changes from process to process, so two runs writing the same clips would get different
    shard hashes (and data ids); the tensors' offsets are relative to the end of the header, so only the
    header is rewritten."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps({"__metadata__": header.pop("__metadata__"), **header}, ensure_ascii=False,
                      separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def decode_shard(data: bytes, *, label: str) -> ClipBatch:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        captions = json.loads(meta["captions"])
        names = json.loads(meta["names"]) if "names" in meta else []
        spans = _spans(meta)
        tokens = tensors["tokens"]
        frames, latents = tensors.get("frames"), tensors.get("latents")
        text, null = tensors.get("text_states"), tensors.get("text_null")
    except (SafetensorError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"shard {label} cannot be parsed: {e}") from None
    if (frames is None) == (latents is None):
        raise IntegrityError(f"shard {label} must hold either frames or latents")
    if frames is not None and (frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise IntegrityError(f"shard {label} has inconsistent shapes")
    if latents is not None and (latents.ndim != 5 or latents.dtype != np.float16):
        raise IntegrityError(f"shard {label} has malformed latents")
    body = frames if frames is not None else latents
    if not tokens.shape[0] == body.shape[0] == len(captions):
        raise IntegrityError(f"shard {label} has inconsistent shapes")
    if spans and len(spans) != len(captions):
        raise IntegrityError(f"shard {label} has {len(spans)} time spans for {len(captions)} clips")
    if (text is None) != (null is None) or (text is not None and (
            text.ndim != 3 or len(text) != len(captions) or null.shape != text.shape[1:])):
        raise IntegrityError(f"shard {label} has malformed text states")
    return ClipBatch(frames, tokens, captions, tensors.get("attributes"), names, latents, spans, text, null)


def _spans(meta: dict) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in json.loads(meta["spans"])] if "spans" in meta else []


class ShardWriter:
    """Accumulates clips and writes fixed-size shards; `finish()` writes the manifest last. `resume`: shards
    an interrupted writer already wrote here (each is checked against its hash; a mismatch is an error)."""

    def __init__(self, out: Path, *, clips_per_shard: int = 256, resume: Iterable[ShardInfo] = ()) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)  # an unfinished rewrite must not look complete
        self.clips_per_shard = clips_per_shard
        self.shards: list[ShardInfo] = []
        for info in resume:
            path = self.out / info.file
            if not path.is_file() or path.stat().st_size != info.bytes or file_sha256(path) != info.sha256:
                raise IntegrityError(f"shard {info.file} in {self.out} does not match the record of the run "
                                     "that wrote it")
            self.shards.append(info)

    def write(self, batch: ClipBatch) -> ShardInfo:
        data = encode_shard(batch)
        name = f"shard-{len(self.shards):05d}.safetensors"
        atomic_write_bytes(self.out / name, data)
        info = ShardInfo(file=name, sha256=sha256_hex(data), clips=len(batch), bytes=len(data))
        self.shards.append(info)
        return info

    def finish(self, *, source: str, frames: int, height: int, width: int, fps: float,
               attributes: tuple[AttributeSpec, ...] = (), generator: dict | None = None,
               latents: LatentInfo | None = None, text: TextStatesInfo | None = None) -> DataManifest:
        if not self.shards:
            raise IntegrityError("no clips were written: the data set would be empty")
        manifest = DataManifest(
            source=source, frames=frames, height=height, width=width, fps=fps, tokenizer=TOKENIZER_NAME,
            context_length=CONTEXT_LENGTH, attributes=attributes, generator=generator or {},
            shards=tuple(self.shards), total_clips=sum(s.clips for s in self.shards), latents=latents,
            text=text,
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
        expected = None if manifest.latents is None else manifest.latents.shape
        got = None if batch.latents is None else tuple(batch.latents.shape[1:])
        if got != expected:
            raise IntegrityError(f"shard {info.file} holds {'latents ' + str(got) if got else 'frames'}, the "
                                 f"manifest says {'latents ' + str(expected) if expected else 'frames'}")
        _check_text(manifest, batch.text_states, batch.text_null, info.file)
        yield info, batch


def _check_text(manifest: DataManifest, rows, null: np.ndarray | None, label: str) -> None:
    """Text states (and the empty caption's) where the manifest says so, of the shape it says."""
    expected = None if manifest.text is None else tuple(manifest.text.shape)
    got = None if rows is None else tuple(rows.row_shape if isinstance(rows, LazyRows) else rows.shape[1:])
    if got != expected or (None if null is None else tuple(null.shape)) != expected:
        raise IntegrityError(f"{label} holds text states {got}, the manifest says {expected}")


def shards_holding(manifest: DataManifest, indices) -> list[int]:
    """Which shards (positions in `manifest.shards`) hold the clips `indices` (positions in the data set)."""
    starts = np.cumsum([0] + [s.clips for s in manifest.shards])
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= starts[-1]):
        raise IntegrityError(f"clip {int(idx.max())} is not in a data set of {int(starts[-1])} clips")
    return sorted({int(s) for s in np.searchsorted(starts, idx, side="right") - 1})


def open_dataset(directory: Path, only=None) -> tuple[DataManifest, ClipBatch]:
    """A verified data set whose frames (or latents) stay on disk: every shard's SHA-256 is checked against
    the manifest (streamed), captions, tokens and attributes are read, and the frames / latents become
    `LazyRows` that a trainer reads a batch at a time. Memory holds one clip's tokens, not its frames.
    `only`: just these clips (positions in the data set, in this order); only the shards holding them are
    read, so the others may be absent (a router fetches only the shards its sample needs)."""
    directory = Path(directory)
    manifest = DataManifest.load(directory)
    key = "frames" if manifest.latents is None else "latents"
    wanted = range(len(manifest.shards)) if only is None else shards_holding(manifest, only)
    files, parts = [], []
    for info in (manifest.shards[i] for i in wanted):
        path = directory / info.file
        if not path.is_file():
            raise IntegrityError(f"shard {info.file} is missing from {directory}")
        if path.stat().st_size != info.bytes or file_sha256(path) != info.sha256:
            raise IntegrityError(f"shard {info.file} is corrupt: its hash does not match the manifest")
        parts.append(_small_parts(path, info))
        files.append(path)
    rows = LazyRows.open(files, key)
    expected = (manifest.frames, manifest.height, manifest.width, 3) if manifest.latents is None \
        else manifest.latents.shape
    if rows.row_shape != tuple(expected):
        raise IntegrityError(f"{directory}: shards hold {key} of {rows.row_shape}, the manifest says {expected}")
    batch = ClipBatch.concat(parts)
    if len(rows) != len(batch):
        raise IntegrityError(f"{directory}: shards hold {len(rows)} {key} for {len(batch)} captions")
    text = LazyRows.open(files, "text_states") if manifest.text is not None else None
    _check_text(manifest, text, batch.text_null, str(directory))
    batch = ClipBatch(rows if key == "frames" else None, batch.tokens, batch.captions, batch.attributes,
                      batch.names, rows if key == "latents" else None, batch.spans, text, batch.text_null)
    if only is not None:  # data-set positions → positions among the shards read
        starts = np.cumsum([0] + [s.clips for s in manifest.shards])
        base = {s: b for s, b in zip(wanted, np.cumsum([0] + [manifest.shards[s].clips for s in wanted]),
                                     strict=False)}
        idx = np.asarray(only, dtype=np.int64)
        shard_of = np.searchsorted(starts, idx, side="right") - 1
        batch = batch.select([base[int(s)] + int(i - starts[s]) for s, i in zip(shard_of, idx, strict=True)])
    return manifest, batch


def _small_parts(path: Path, info: ShardInfo) -> ClipBatch:
    """A shard's captions, names, tokens and attributes (its frames or latents left on disk)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n <= 100 << 20 else {}
        meta = header.get("__metadata__", {})
        captions = json.loads(meta["captions"])
        names = json.loads(meta["names"]) if "names" in meta else []
        spans = _spans(meta)
        tokens = _read_tensor(path, "tokens")
        attributes = _read_tensor(path, "attributes") if "attributes" in header else None
        null = _read_tensor(path, "text_null") if "text_null" in header else None
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"shard {info.file} cannot be parsed: {e}") from None
    if spans and len(spans) != info.clips:
        raise IntegrityError(f"shard {info.file} has {len(spans)} time spans for {info.clips} clips")
    if len(captions) != info.clips or tokens.ndim != 2 or len(tokens) != info.clips:
        raise IntegrityError(f"shard {info.file} holds {len(tokens)} clips, the manifest says {info.clips}")
    return ClipBatch(None, tokens, captions, attributes, names, spans=spans, text_null=null)


def _read_tensor(path: Path, key: str) -> np.ndarray:
    offset, shape, dtype = tensor_location(path, key)
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), int(np.prod(shape)) * dtype.itemsize, offset)
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def load_dataset(directory: Path) -> tuple[DataManifest, ClipBatch]:
    """Load and verify a whole data set into memory (clips in manifest order)."""
    manifest = DataManifest.load(directory)
    return manifest, ClipBatch.concat([b for _, b in iter_shards(directory, manifest)])
