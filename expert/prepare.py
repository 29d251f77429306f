"""`data prepare`: real videos + captions, in any common layout → the same verified shards as the synthetic data.

`video_layouts` turns the input into an ordered list of clips to cut; `video_decode` cuts each (seek, decode
only what is needed, resample to the run's fps, aspect-preserving fit) in worker processes; here the results
are put back in input order and written as shards, so the data id does not depend on the number of workers.
Files that cannot be decoded, are too short, or have no caption are skipped and listed in the report file
(`prepare-report.json`); they never abort the run. Every finished shard is recorded atomically in
`prepare-state.json`, so an interrupted run, started again with the same arguments, continues after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from expert.shards import ClipBatch, ShardWriter, tokenize
from expert.video_decode import ClipResult, Crop, DecodeSpec, decode_task
from expert.video_layouts import ClipTask, Layout, Skipped, find_clips, read_table
from protocol.atomic import atomic_write_text
from protocol.data import MANIFEST_NAME, ShardInfo
from protocol.errors import IntegrityError, ParisError

REPORT_NAME = "prepare-report.json"
STATE_NAME = "prepare-state.json"

__all__ = ["PrepareReport", "Skipped", "prepare_videos", "read_captions"]


class PrepareReport(BaseModel):
    """What `data prepare` wrote and skipped; also written to `prepare-report.json` beside the shards."""

    data_id: str | None
    written: int
    skipped: list[Skipped]
    layout: str = ""
    fps: float = 8.0
    resumed: int = 0  # clips kept from an interrupted run's shards
    peak_worker_rss: int = 0  # bytes, the largest resident set a decoding process reached
    decode_cpu_s: float = 0.0  # CPU seconds spent decoding, all processes together (this run only)
    key: str = ""  # the inputs and settings this report is for


class _State(BaseModel):
    """An unfinished run: the first `done` clips to cut are in `shards` or `skipped`."""

    key: str
    done: int
    shards: list[ShardInfo]
    skipped: list[Skipped]


def read_captions(path: Path) -> dict[str, str]:
    """file name → caption from a captions table (column names detected as `data prepare` does)."""
    from expert.video_layouts import detect_columns

    columns, rows = read_table(Path(path))
    cols = detect_columns(columns, where=Path(path).name)
    captions = {str(r[cols.video]): str(r[cols.caption]).strip() for r in rows
                if r.get(cols.video) and r.get(cols.caption)}
    if not captions:
        raise ParisError(f"{path} holds no captions in columns {cols.video!r} and {cols.caption!r}")
    return captions


def prepare_videos(videos: Path, captions_file: Path | None, out: Path, *, frames: int = 16, height: int = 64,
                   width: int = 64, fps: float = 8.0, crop: Crop = "centre", clips_per_shard: int = 256,
                   workers: int = 0, video_column: str | None = None, caption_column: str | None = None,
                   on_total: Callable[[int], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> PrepareReport:
    """Cut one clip per video (per timestamp pair where the layout has them) of `frames` frames at `fps`,
    H×W. `workers`: decoding processes (0: decode in this process)."""
    out = Path(out)
    layout = find_clips(Path(videos), None if captions_file is None else Path(captions_file),
                        video_column=video_column, caption_column=caption_column)
    spec = DecodeSpec(frames=frames, fps=fps, height=height, width=width, crop=crop)
    key = _key(layout, spec, clips_per_shard)
    if on_total:
        on_total(len(layout.tasks))
    finished = _finished(out, key)
    if finished is not None:
        if on_progress:
            on_progress(len(layout.tasks))
        return finished
    state = _load_state(out, key)
    try:
        writer = ShardWriter(out, clips_per_shard=clips_per_shard, resume=state.shards if state else ())
    except IntegrityError:
        state, writer = None, ShardWriter(out, clips_per_shard=clips_per_shard)
    done = state.done if state else 0
    skipped = list(state.skipped) if state else []
    resumed = sum(s.clips for s in writer.shards)
    if on_progress and done:
        on_progress(done)
    pending: list[tuple[ClipTask, ClipResult]] = []
    peak, cpu = 0, 0.0

    def flush(upto: int) -> None:
        if pending:
            caps = [t.caption for t, _ in pending]
            writer.write(ClipBatch(np.stack([r.frames for _, r in pending]), tokenize(caps), caps,
                                   names=[t.name for t, _ in pending], spans=[r.span for _, r in pending]))
            pending.clear()
            state = _State(key=key, done=upto, shards=writer.shards, skipped=skipped)
            atomic_write_text(out / STATE_NAME, state.model_dump_json())

    todo = layout.tasks[done:]
    for i, (task, result) in enumerate(zip(todo, _results(todo, spec, workers), strict=True), start=done + 1):
        peak = max(peak, result.peak_rss)
        cpu += result.cpu_s
        if result.error is not None or result.frames is None:
            skipped.append(Skipped(file=task.name, reason=result.error or "no frames"))
        else:
            pending.append((task, result))
        if len(pending) == clips_per_shard:
            flush(i)
        if on_progress:
            on_progress(1)
    flush(len(layout.tasks))
    all_skipped = layout.skipped + skipped
    if not writer.shards:
        raise ParisError(f"no usable clips in {videos} ({len(all_skipped)} skipped): nothing was written")
    manifest = writer.finish(source="real", frames=frames, height=height, width=width, fps=fps,
                             generator={"name": "prepare", "videos": len(layout.tasks), "layout": layout.kind,
                                        "crop": crop})
    report = PrepareReport(data_id=manifest.data_id, written=manifest.total_clips, skipped=all_skipped,
                           layout=layout.kind, fps=fps, resumed=resumed, peak_worker_rss=peak,
                           decode_cpu_s=round(cpu, 3), key=key)
    atomic_write_text(out / REPORT_NAME, report.model_dump_json(indent=1))
    (out / STATE_NAME).unlink(missing_ok=True)
    return report


def _key(layout: Layout, spec: DecodeSpec, clips_per_shard: int) -> str:
    """A digest of what decides the shards: the clips to cut, in order, and how they are cut."""
    h = hashlib.sha256(json.dumps([spec.model_dump(), clips_per_shard, layout.kind]).encode())
    for task in layout.tasks:
        h.update(json.dumps(dataclasses.astuple(task)).encode())
    return h.hexdigest()


def _finished(out: Path, key: str) -> PrepareReport | None:
    """The report of a finished run with the same key, if its data set is still complete."""
    try:
        report = PrepareReport.model_validate_json((out / REPORT_NAME).read_bytes())
    except (OSError, ValidationError):
        return None
    if report.key != key or not (out / MANIFEST_NAME).is_file() or (out / STATE_NAME).exists():
        return None
    return report


def _load_state(out: Path, key: str) -> _State | None:
    try:
        state = _State.model_validate_json((out / STATE_NAME).read_bytes())
    except (OSError, ValidationError):
        return None
    return state if state.key == key else None


def _results(tasks: list[ClipTask], spec: DecodeSpec, workers: int) -> Iterator[ClipResult]:
    """Each task's result, in task order; `workers` > 0 decodes in that many spawned processes, a few
    tasks ahead (bounded, so finished clips never pile up in memory)."""
    if workers <= 0:
        for task in tasks:
            yield decode_task(task, spec)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_sigint)
    inflight: deque[Future[ClipResult]] = deque()
    queue = iter(tasks)
    try:
        while True:
            while len(inflight) < 2 * workers and (task := next(queue, None)) is not None:
                inflight.append(pool.submit(decode_task, task, spec))
            if not inflight:
                return
            yield inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which records what is finished and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
