"""Where the clips of a real data set are and what they say: the common layouts, read by name.

A researcher's videos come the way public data sets ship them: a folder plus a captions table (OpenVid
`video,caption`; WebVid `videoid,name,page_dir`; Panda-70M `videoID,timestamp,caption`, several clips per
source video cut at timestamps), a Hugging Face VideoFolder (`metadata.jsonl|csv|parquet` beside the files,
`file_name,text`), or webdataset tar shards (`{key}.mp4` + `{key}.txt|json`). Each becomes the same list of
`ClipTask`s, in a fixed order, so the same input always gives the same data set. Tables are read with the
standard library (csv, json) and pyarrow (Parquet); tars with the standard library's tarfile.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from protocol.errors import ParisError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
METADATA_NAMES = tuple(f"metadata{s}" for s in (".jsonl", ".csv", ".parquet"))  # HF VideoFolder
# Column names by tier: a name of the first tier present wins; two of one tier are ambiguous.
VIDEO_COLUMNS = (("video", "path", "file", "filename", "file_name", "video_path", "videoid", "video_id",
                  "clip", "clip_path", "video_file"), ("key", "id"))
CAPTION_COLUMNS = (("caption", "text", "prompt", "description", "captions", "caption_text"), ("name", "title"))
TIMESTAMP_COLUMNS = ("timestamp", "timestamps")
START_END_COLUMNS = (("start", "end"), ("start_time", "end_time"), ("start_sec", "end_sec"))
_WDS_CAPTIONS = (".txt", ".caption", ".json")


@dataclass(frozen=True, slots=True)
class ClipTask:
    """One clip to cut: a video file (or a member of a tar, at `offset`/`size` bytes), a caption, and
    optionally the [start, end] seconds of the source it comes from (Panda-70M-style timestamps). A slotted
    dataclass, not a pydantic model: a million of them take ~0.35 GB instead of ~0.83 GB (measured), and every field is
    built here from input already checked."""

    name: str
    caption: str
    source: str
    offset: int | None = None
    size: int | None = None
    start: float | None = None
    end: float | None = None


class Skipped(BaseModel):
    file: str
    reason: str


class Columns(BaseModel):
    """Which columns of a captions table hold what."""

    video: str
    caption: str
    timestamp: str | None = None
    start_end: tuple[str, str] | None = None
    page_dir: str | None = None


@dataclass
class Layout:
    """What `find_clips` read: the layout's name, the clips to cut, and the files or rows it had to skip."""

    kind: str
    tasks: list[ClipTask]
    skipped: list[Skipped]


def find_clips(videos: Path, captions: Path | None = None, *, video_column: str | None = None,
               caption_column: str | None = None) -> Layout:
    """Read any supported layout: a captions table (`captions`), else a VideoFolder's metadata files,
    else webdataset tar shards (a .tar or a folder of them)."""
    videos = Path(videos)
    if not videos.exists():
        raise ParisError(f"--videos {videos} does not exist")
    if videos.is_file() and videos.name.endswith(".tar"):
        return _webdataset([videos], caption_column)
    if not videos.is_dir():
        raise ParisError(f"--videos {videos} is neither a folder nor a webdataset .tar shard")
    if captions is not None:
        index = _FileIndex(videos)
        tasks, skipped = _table_tasks(Path(captions), index, videos, video_column, caption_column)
        return Layout(kind=f"table:{Path(captions).suffix.lstrip('.').lower()}", tasks=tasks,
                      skipped=index.uncaptioned() + skipped)
    metadata = sorted(p for p in videos.rglob("metadata.*") if p.name in METADATA_NAMES)
    if metadata:
        tasks, skipped = [], []
        index = _FileIndex(videos)
        for meta in metadata:
            t, s = _table_tasks(meta, index, meta.parent, video_column, caption_column)
            tasks += t
            skipped += s
        return Layout(kind="videofolder", tasks=tasks, skipped=index.uncaptioned() + skipped)
    tars = sorted(p for p in videos.rglob("*") if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")))
    if tars:
        return _webdataset(tars, caption_column)
    raise ParisError(f"no captions for {videos}: pass --captions FILE (CSV/TSV/JSONL/Parquet), or give a folder "
                     "with a metadata.jsonl (Hugging Face VideoFolder) or webdataset .tar shards")


# ---- captions tables -------------------------------------------------------------------------------------

def read_table(path: Path) -> tuple[list[str], Iterator[dict]]:
    """(column names, rows) of a CSV/TSV/JSONL/JSON/Parquet file; a one-line error if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ParisError(f"captions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ParisError(f"captions file {path.name}: expected one of {', '.join(TABLE_SUFFIXES)}")
    if suffix == ".parquet":
        return _parquet(path)
    if suffix in (".csv", ".tsv"):
        return _csv(path, "\t" if suffix == ".tsv" else ",")
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(64).lstrip()
    if suffix == ".json" and head.startswith("["):
        try:
            rows = [r for r in json.loads(path.read_text(encoding="utf-8-sig")) if isinstance(r, dict)]
        except json.JSONDecodeError as e:
            raise ParisError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        return list(dict.fromkeys(k for r in rows[:1000] for k in r)), iter(rows)
    rows_iter = _jsonl(path)
    first = list(itertools.islice(rows_iter, 1000))  # the columns are the keys of the first rows
    return list(dict.fromkeys(k for r in first for k in r)), itertools.chain(first, rows_iter)


def _csv(path: Path, delimiter: str) -> tuple[list[str], Iterator[dict]]:
    """Streamed: a Panda-70M or WebVid CSV is hundreds of MB."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        columns = [c.strip() for c in next(csv.reader(f, delimiter=delimiter), [])]

    def rows() -> Iterator[dict]:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            next(reader, None)
            for row in reader:
                yield dict(zip(columns, row, strict=False))

    return columns, rows()


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ParisError(f"{path}:{n} is not valid JSON") from None
            if isinstance(row, dict):
                yield row


def _parquet(path: Path) -> tuple[list[str], Iterator[dict]]:
    import pyarrow.parquet as pq  # only a Parquet captions file needs pyarrow

    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise ParisError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]})") from None

    def rows() -> Iterator[dict]:
        for batch in f.iter_batches(batch_size=4096):
            yield from batch.to_pylist()

    return list(f.schema_arrow.names), rows()


def detect_columns(columns: list[str], *, video: str | None = None, caption: str | None = None,
                   where: str = "captions") -> Columns:
    """The video and caption columns by their common names (or as given), plus Panda-style timestamps and
    WebVid's page_dir; a one-line error naming the columns found when they are missing or ambiguous."""
    lower = {c.lower(): c for c in columns}
    found = ", ".join(columns) or "none"

    def pick(given: str | None, tiers: tuple[tuple[str, ...], ...], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise ParisError(f"{where} has no column {given!r} ({flag}); columns found: {found}")
            return given
        for tier in tiers:
            hits = [lower[n] for n in tier if n in lower]
            if len(hits) > 1:
                raise ParisError(f"{where}: {what} column is ambiguous ({', '.join(hits)}); pick one with {flag}. "
                                 f"Columns found: {found}")
            if hits:
                return hits[0]
        raise ParisError(f"{where}: no {what} column; name it with {flag}. Columns found: {found}")

    video_col = pick(video, VIDEO_COLUMNS, "video", "--video-column")
    caption_col = pick(caption, CAPTION_COLUMNS, "caption", "--caption-column")
    if video_col == caption_col:
        raise ParisError(f"{where}: the video and caption columns are both {video_col!r}; columns found: {found}")
    timestamp = next((lower[n] for n in TIMESTAMP_COLUMNS if n in lower), None)
    start_end = next(((lower[a], lower[b]) for a, b in START_END_COLUMNS if a in lower and b in lower), None)
    return Columns(video=video_col, caption=caption_col, timestamp=timestamp, start_end=start_end,
                   page_dir=lower.get("page_dir"))


def parse_time(value) -> float:
    """Seconds from a number or "H:MM:SS.mmm" / "MM:SS" / "SS.s" (Panda-70M writes "0:00:01.000")."""
    if isinstance(value, int | float):
        return float(value)
    parts = str(value).strip().split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a time: {value!r}")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def _literal(value):
    """A list written into a CSV cell (Panda-70M's "[['0:00:00.000', '0:00:05.000'], ...]")."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value  # a caption that happens to start with "["
    return value


def _segments(row: dict, cols: Columns) -> list[tuple[float | None, float | None, str]]:
    """(start, end, caption) for each clip a row describes."""
    caption = _literal(row.get(cols.caption))
    if cols.timestamp and row.get(cols.timestamp) not in (None, "", []):
        stamps = _literal(row[cols.timestamp])
        if len(stamps) == 2 and not isinstance(stamps[0], list | tuple):
            stamps = [stamps]  # one pair, not a list of pairs
        captions = caption if isinstance(caption, list | tuple) else [caption] * len(stamps)
        if len(captions) != len(stamps):
            raise ValueError(f"{len(stamps)} timestamps but {len(captions)} captions")
        return [(parse_time(a), parse_time(b), str(c or "").strip()) for (a, b), c in zip(stamps, captions,
                                                                                        strict=True)]
    if cols.start_end and row.get(cols.start_end[0]) not in (None, ""):
        a, b = (parse_time(row[c]) for c in cols.start_end)
        return [(a, b, str(caption or "").strip())]
    if isinstance(caption, list | tuple):
        caption = caption[0] if caption else ""
    return [(None, None, str(caption or "").strip())]


class _FileIndex:
    """The video files under a folder, found by relative path, path without suffix, name or stem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        self.keys: dict[str, Path] = {}
        for p in self.files:
            rel = p.relative_to(root).as_posix()
            for key in (rel, rel.rsplit(".", 1)[0]):
                self.keys[key] = p
        for p in self.files:
            for key in (p.name, p.stem):
                self.keys.setdefault(key, p)
        self.used: set[Path] = set()

    def find(self, value: str, base: Path, page_dir: str | None = None) -> Path | None:
        value = value.strip().removeprefix("./")
        if not value:
            return None
        candidates = [(base / value)] if base != self.root else []
        if page_dir:
            candidates.append(self.root / page_dir / value)
        for cand in candidates:
            rel = cand.relative_to(self.root).as_posix() if cand.is_relative_to(self.root) else None
            if rel is not None and rel in self.keys:
                return self.keys[rel]
        hit = self.keys.get(value)
        if hit is None and Path(value).is_absolute() and Path(value).is_file():
            hit = Path(value)
        return hit

    def uncaptioned(self) -> list[Skipped]:
        return [Skipped(file=p.relative_to(self.root).as_posix(), reason="no caption")
                for p in self.files if p not in self.used]


def _table_tasks(path: Path, index: _FileIndex, base: Path, video_column: str | None,
                 caption_column: str | None) -> tuple[list[ClipTask], list[Skipped]]:
    columns, rows = read_table(path)
    cols = detect_columns(columns, video=video_column, caption=caption_column, where=path.name)
    tasks: list[ClipTask] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for row in rows:
        value = row.get(cols.video)
        if value in (None, ""):
            continue
        value = str(value)
        file = index.find(value, base, str(row.get(cols.page_dir) or "") if cols.page_dir else None)
        if file is None:
            skipped.append(Skipped(file=value, reason=f"no such video under {index.root}"))
            continue
        rel = file.relative_to(index.root).as_posix() if file.is_relative_to(index.root) else str(file)
        try:
            segments = _segments(row, cols)
        except (ValueError, SyntaxError, TypeError) as e:
            skipped.append(Skipped(file=rel, reason=f"bad timestamps: {str(e).splitlines()[0]}"))
            index.used.add(file)
            continue
        index.used.add(file)
        for i, (start, end, caption) in enumerate(segments):
            name = rel if start is None else f"{rel}#{i}"
            if name in seen:
                skipped.append(Skipped(file=name, reason="listed again (the first row was used)"))
                continue
            seen.add(name)
            if not caption:
                skipped.append(Skipped(file=name, reason="no caption"))
                continue
            if start is not None and end is not None and end <= start:
                skipped.append(Skipped(file=name, reason=f"bad timestamps: ends at {end:g} s, before {start:g} s"))
                continue
            tasks.append(ClipTask(name=name, caption=caption, source=str(file), start=start, end=end))
    return tasks, skipped


# ---- webdataset tar shards -------------------------------------------------------------------------------

def _webdataset(tars: list[Path], caption_column: str | None) -> Layout:
    """Each `{key}.{video suffix}` member with a `{key}.txt|caption|json` beside it is a clip; the video is
    read in place (by byte offset) from the plain tar, never extracted."""
    tasks: list[ClipTask] = []
    skipped: list[Skipped] = []
    for tar in tars:
        if not tar.name.endswith(".tar"):
            raise ParisError(f"{tar.name} is compressed: webdataset shards must be plain .tar (decompress it first)")
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(tar, "r:") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    head, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if dot:
                        groups.setdefault(f"{head}/{stem}" if head else stem, {})[f".{ext.lower()}"] = member
                captions = {key: _wds_caption(tf, parts, caption_column) for key, parts in groups.items()}
        except (tarfile.TarError, OSError) as e:
            raise ParisError(f"{tar} is not a readable tar file ({e})") from None
        for key, parts in groups.items():
            video = next((s for s in parts if s in VIDEO_SUFFIXES), None)
            if video is None:
                continue
            name = f"{tar.name}/{key}{video}"
            if not captions[key]:
                skipped.append(Skipped(file=name, reason="no caption"))
                continue
            member = parts[video]
            tasks.append(ClipTask(name=name, caption=captions[key], source=str(tar), offset=member.offset_data,
                                  size=member.size))
    return Layout(kind="webdataset", tasks=tasks, skipped=skipped)


def _wds_caption(tf: tarfile.TarFile, parts: dict[str, tarfile.TarInfo], caption_column: str | None) -> str:
    for suffix in _WDS_CAPTIONS:
        if suffix not in parts:
            continue
        f = tf.extractfile(parts[suffix])
        text = f.read().decode("utf-8", errors="replace") if f else ""
        if suffix != ".json":
            return text.strip()
        try:
            meta = json.loads(text)
        except json.JSONDecodeError:
            return ""
        if not isinstance(meta, dict):
            return ""
        col = caption_column if caption_column in meta else None if caption_column else _caption_key(meta)
        return str(meta.get(col) or "").strip() if col else ""
    return ""


def _caption_key(meta: dict) -> str | None:
    lower = {k.lower(): k for k in meta}
    for tier in CAPTION_COLUMNS:
        hits = [lower[n] for n in tier if n in lower]
        if hits:
            return hits[0]
    return None
