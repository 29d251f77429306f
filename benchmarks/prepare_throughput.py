"""`data prepare` on a long high-resolution source: clips/s and peak resident memory per decoding process,
streamed (seek + decode only each clip's frames, the way `data prepare` works now) with 1 and 2 worker
processes, against decoding the whole video into RGB frames first (the way it worked before issue 26).
Targets: ≤ 300 MB per worker on a 60 s 1080p source, and ≥ 1.5× one worker's clips/s with two.

    python benchmarks/prepare_throughput.py [--seconds 60] [--source-size 1920x1080] [--clips 4]
        [--old-seconds 10] [--workers 1,2] [--work DIR] [--json]

The source is an H.264 MP4 written once with PyAV (x264's default keyframe interval, 250 frames ≈ 10 s at
24 fps, as a camera or a web video has), kept in `--work` between runs. Each clip is 16 frames at 8 fps
(2 s) cut from its own stretch of the source (Panda-70M-style timestamps), 64×64. The whole-video decode
holds every frame: 60 s of 1080p is ≈ 9 GB of RGB, so by default it runs on the first `--old-seconds` s
of the same source (its memory grows with the length; the time is per clip).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FPS = 24
CLIP = {"frames": 16, "fps": 8.0, "height": 64, "width": 64}


def write_source(path: Path, seconds: float, height: int, width: int) -> Path:
    """A moving pattern, `seconds` long at 24 fps, H.264 yuv420p (written once, atomically)."""
    import av
    import numpy as np

    if path.is_file():
        return path
    tmp = path.with_suffix(".part.mp4")
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 255 // (width + height))], -1)
    base = base.astype(np.uint8)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 32, size=(height, width, 3), dtype=np.uint8)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(round(seconds * FPS)):
            img = np.roll(base, shift=(i * 3, i * 5), axis=(0, 1)) + noise
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    tmp.replace(path)
    return path


def cut_source(src: Path, dst: Path, seconds: float) -> Path:
    """The first `seconds` of `src`, remuxed (no re-encoding)."""
    import av

    if dst.is_file():
        return dst
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        for packet in inp.demux(stream_in):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * stream_in.time_base >= seconds:
                break
            packet.stream = stream_out
            out.mux(packet)
    return dst


def old_decode(path: str, frames: int, height: int, width: int) -> tuple[float, int]:
    """The pre-issue-26 `decode_clip`: every frame to PIL, then `frames` of them resized and cropped.
    Returns (seconds, this process's peak RSS)."""
    import av
    import numpy as np
    from PIL import Image

    from expert.video_decode import peak_rss

    t0 = time.perf_counter()
    with av.open(path) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
    idx = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for j, i in enumerate(idx):
        img = decoded[i].convert("RGB")
        scale = max(height / img.height, width / img.width)
        w2, h2 = max(width, round(img.width * scale)), max(height, round(img.height * scale))
        img = img.resize((w2, h2), Image.BICUBIC)
        left, top = (w2 - width) // 2, (h2 - height) // 2
        out[j] = np.asarray(img.crop((left, top, left + width, top + height)))
    return time.perf_counter() - t0, peak_rss()


def idle_rss() -> int:
    """A decoding worker's resident set before it decodes anything (Python, numpy, PyAV, pydantic)."""
    import expert.video_decode  # noqa: F401  (what a worker imports)
    from expert.video_decode import peak_rss

    return peak_rss()


def streamed(work: Path, source: Path, seconds: float, clips: int, workers: int) -> dict:
    """`prepare_videos` on `clips` timestamped stretches of the source, in `workers` processes."""
    from expert.prepare import prepare_videos

    folder = work / "videos"
    folder.mkdir(exist_ok=True)
    link = folder / "source.mp4"
    if not link.exists():
        link.symlink_to(source.resolve())
    stretch = seconds / clips
    rows = [{"videoID": "source", "timestamp": [[i * stretch, (i + 1) * stretch] for i in range(clips)],
             "caption": [f"stretch {i}" for i in range(clips)]}]
    captions = work / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / f"out-{workers}"
    t0 = time.perf_counter()
    report = prepare_videos(folder, captions, out, workers=workers, clips_per_shard=clips, **CLIP)
    dt = time.perf_counter() - t0
    for f in out.iterdir():  # the next run must decode again, not find this one finished
        f.unlink()
    out.rmdir()
    assert report.written == clips, report.skipped
    return {"workers": workers, "clips": clips, "seconds": round(dt, 2), "clips_per_s": round(clips / dt, 3),
            "decode_cpu_s_per_clip": round(report.decode_cpu_s / clips, 3),
            "peak_rss_mb_per_worker": round(report.peak_worker_rss / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the source")
    ap.add_argument("--source-size", default="1920x1080", help="WxH of the source")
    ap.add_argument("--clips", type=int, default=4, help="clips cut from it per run")
    ap.add_argument("--old-seconds", type=float, default=10.0, help="source length for the whole-video decode")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--work", type=Path, default=None, help="folder that keeps the source between runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.source_size.lower().split("x"))
    if args.seconds / args.clips < CLIP["frames"] / CLIP["fps"]:
        ap.error(f"{args.clips} clips of {CLIP['frames'] / CLIP['fps']:g} s do not fit in {args.seconds:g} s")
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    source = write_source(work / f"source-{args.seconds:g}s-{width}x{height}.mp4", args.seconds, height, width)
    written_s = time.perf_counter() - t0
    from expert.shards import tokenize

    tokenize([""])  # the tokenizer loads once, outside the timings
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        idle = pool.submit(idle_rss).result()
    old_seconds = min(args.old_seconds, args.seconds)
    short = cut_source(source, work / f"first-{old_seconds:g}s.mp4", old_seconds)
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # a fresh process: its peak is this decode's
        old_s, old_rss = pool.submit(old_decode, str(short), CLIP["frames"], CLIP["height"], CLIP["width"]).result()
    runs = [streamed(work, source, args.seconds, args.clips, int(w)) for w in args.workers.split(",")]
    result = {
        "source": {"seconds": args.seconds, "size": f"{width}x{height}", "fps": FPS, "codec": "h264",
                   "bytes": source.stat().st_size, "written_s": round(written_s, 1)},
        "clip": CLIP,
        "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "idle_worker_rss_mb": round(idle / 2**20, 1),
        "whole_video_decode": {"source_seconds": old_seconds, "seconds_per_clip": round(old_s, 2),
                               "clips_per_s": round(1 / old_s, 3), "peak_rss_mb": round(old_rss / 2**20, 1)},
        "streamed": runs,
    }
    if len(runs) > 1:
        result["speedup"] = round(runs[-1]["clips_per_s"] / runs[0]["clips_per_s"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"source: {args.seconds:g} s {width}x{height} H.264 ({source.stat().st_size / 2**20:.1f} MiB); "
              f"an idle worker holds {result['idle_worker_rss_mb']} MB")
        w = result["whole_video_decode"]
        print(f"whole-video decode ({old_seconds:g} s of it): {w['seconds_per_clip']} s/clip, "
              f"peak {w['peak_rss_mb']} MB")
        for r in runs:
            print(f"streamed, {r['workers']} worker(s): {r['clips_per_s']} clips/s "
                  f"({r['decode_cpu_s_per_clip']} CPU s per clip), peak {r['peak_rss_mb_per_worker']} MB per worker")
        if "speedup" in result:
            print(f"{runs[-1]['workers']} workers vs {runs[0]['workers']}: {result['speedup']}x")
    return result


if __name__ == "__main__":
    main()
