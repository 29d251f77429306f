"""`data prepare`: real video files + captions → the same verified shards as the synthetic data.

Each file is decoded with PyAV, `frames` frames are sampled evenly over its length, each is resized so
the shorter side fits and centre-cropped to H×W. Files that cannot be decoded, are too short, or have no
caption are skipped and reported; they never abort the run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from expert.shards import ClipBatch, ShardWriter, tokenize
from protocol.errors import ParisError

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg"}
_CAPTION_KEYS = ("caption", "text", "prompt")
_FILE_KEYS = ("file", "path", "video", "filename")


class Skipped(BaseModel):
    file: str
    reason: str


class PrepareReport(BaseModel):
    data_id: str | None
    written: int
    skipped: list[Skipped]


def read_captions(path: Path) -> dict[str, str]:
    """file name (relative path or bare name) → caption, from JSONL or CSV."""
    if not Path(path).is_file():
        raise ParisError(f"captions file {path} does not exist")
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    rows: list[dict] = []
    if Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ParisError(f"{path}:{n} is not valid JSON") from None
            if isinstance(row, dict):
                rows.append(row)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    captions = {}
    for row in rows:
        key = next((str(row[k]) for k in _FILE_KEYS if row.get(k)), None)
        cap = next((str(row[k]).strip() for k in _CAPTION_KEYS if row.get(k)), None)
        if key and cap:
            captions[key] = cap
    if not captions:
        raise ParisError(f"{path} holds no captions (expected 'file' and 'caption' fields)")
    return captions


def decode_clip(path: Path, frames: int, height: int, width: int) -> np.ndarray:
    """T×H×W×3 uint8: `frames` frames evenly spaced over the video, resized and centre-cropped."""
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        decoded = [f.to_image() for f in container.decode(video=0)]
    if len(decoded) < frames:
        raise ValueError(f"only {len(decoded)} frames, {frames} needed")
    idx = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for j, i in enumerate(idx):
        img = decoded[i].convert("RGB")
        scale = max(height / img.height, width / img.width)
        w2, h2 = max(width, round(img.width * scale)), max(height, round(img.height * scale))
        img = img.resize((w2, h2), Image.BICUBIC)
        left, top = (w2 - width) // 2, (h2 - height) // 2
        out[j] = np.asarray(img.crop((left, top, left + width, top + height)))
    return out


def prepare_videos(videos: Path, captions_file: Path, out: Path, *, frames: int = 16, height: int = 64,
                   width: int = 64, clips_per_shard: int = 256, fps: float = 8.0,
                   on_total: Callable[[int], None] | None = None,
                   on_progress: Callable[[], None] | None = None) -> PrepareReport:
    videos = Path(videos)
    if not videos.is_dir():
        raise ParisError(f"--videos {videos} is not a folder")
    captions = read_captions(captions_file)
    files = sorted(p for p in videos.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if on_total:
        on_total(len(files))
    writer = ShardWriter(out, clips_per_shard=clips_per_shard)
    skipped: list[Skipped] = []
    pending: list[tuple[str, np.ndarray, str]] = []

    def flush() -> None:
        if pending:
            caps = [c for _, _, c in pending]
            writer.write(ClipBatch(np.stack([f for _, f, _ in pending]), tokenize(caps), caps,
                                   names=[n for n, _, _ in pending]))
            pending.clear()

    for path in files:
        rel = path.relative_to(videos).as_posix()
        caption = captions.get(rel) or captions.get(path.name)
        if on_progress:
            on_progress()
        if caption is None:
            skipped.append(Skipped(file=rel, reason="no caption"))
            continue
        try:
            clip = decode_clip(path, frames, height, width)
        except Exception as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append(Skipped(file=rel, reason=f"unreadable: {detail}"))
            continue
        pending.append((rel, clip, caption))
        if len(pending) == clips_per_shard:
            flush()
    flush()
    if not writer.shards:
        raise ParisError(f"no usable clips in {videos} ({len(skipped)} skipped): nothing was written")
    manifest = writer.finish(source="real", frames=frames, height=height, width=width, fps=fps,
                             generator={"name": "prepare", "videos": len(files)})
    return PrepareReport(data_id=manifest.data_id, written=manifest.total_clips, skipped=skipped)
