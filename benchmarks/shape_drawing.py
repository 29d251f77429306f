"""Can the demo's expert draw an outline at all? Trains the demo's expert (the `small` preset, the demo's
cluster, seeds and budget) on single-object clips of only the given shapes, then samples each shape's prompt
and asks the synthetic-data judge which shape it sees, beside the judge on real clips of those prompts.

With one shape there is nothing for the caption to choose: a miss is the drawing, not the conditioning.
With two (say cross and circle) the caption has to pick the outline. This separates the two causes of the
missing shape in the demo's videos (docs/research-demo-quality.md, "Why the shape is missing").

    python benchmarks/shape_drawing.py [--shapes cross] [--steps 3000] [--frames 8] [--work DIR] [--strip PNG] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from demo_quality import DEMO, parse_with_work_options, train_to

from expert.evaluate import EVAL_SEED
from expert.presets import get_preset
from expert.run_init import init_run
from expert.sampling import load_expert, sample
from expert.shards import ClipBatch, ShardWriter, tokenize
from expert.synth import ATTRIBUTES, GENERATOR_VERSION, MOTION_PHRASES, SHAPES, ClipSpec, render_clip
from expert.synth_classifier import cached_judge
from expert.synth_dataset import SYNTH_FPS
from expert.video_io import frame_strip, write_image
from protocol.data import AttributeSpec
from protocol.run import RunSpec

SEARCH = 200_000  # generator clips to look through (14 % of them are single objects of any one shape)


def log(msg: str) -> None:
    print(f"[shape_drawing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wanted(spec: ClipSpec, shapes: tuple[int, ...]) -> bool:
    return len(spec.objects) == 1 and spec.objects[0].shape in shapes


def write_shapes(out: Path, shapes: tuple[int, ...], clips: int, frames: int = 16) -> None:
    """The first `clips` single-object clips of generator seed 0 whose shape is one of `shapes`, as shards."""
    writer, batch, found = ShardWriter(out), [], 0
    for i in range(SEARCH):
        video, spec = render_clip(0, i, frames, 32, 32)
        if wanted(spec, shapes):
            batch.append((video, spec))
            found += 1
        if len(batch) == 256 or (batch and found == clips):
            captions = [s.caption for _, s in batch]
            writer.write(ClipBatch(np.stack([v for v, _ in batch]), tokenize(captions), captions,
                                   np.asarray([s.attributes for _, s in batch], dtype=np.int64)))
            batch = []
        if found == clips:
            break
    else:
        raise SystemExit(f"only {found} of {SEARCH} generator clips are single {'/'.join(SHAPES[s] for s in shapes)}")
    writer.finish(source="synthetic", frames=frames, height=32, width=32, fps=SYNTH_FPS,
                  attributes=tuple(AttributeSpec(name=k, values=v) for k, v in ATTRIBUTES.items()),
                  generator={"name": "moving-shapes", "version": GENERATOR_VERSION, "seed": 0, "clips": clips,
                             "only_single": ",".join(SHAPES[s] for s in shapes)})


def real_clips(shape: int, colour: int, background: int, n: int) -> np.ndarray:
    """n real single-object clips of that shape, colour and background (evaluation seed, any motion)."""
    out = []
    for i in range(SEARCH):
        video, spec = render_clip(EVAL_SEED, i)
        o = spec.objects[0]
        if len(spec.objects) == 1 and (o.shape, o.colour, spec.background) == (shape, colour, background):
            out.append(video)
            if len(out) == n:
                return np.stack(out)
    raise SystemExit(f"too few real clips of {SHAPES[shape]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="cross", help="comma-separated shapes to train on: " + ", ".join(SHAPES))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=8, help="the expert's frames (8: half the cost of the demo's 16)")
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--n", type=int, default=16, help="samples per shape")
    args = parse_with_work_options(ap, work=Path("shape-drawing"), strip="a PNG frame strip (4 samples per shape)")
    try:
        shapes = tuple(SHAPES.index(s.strip()) for s in args.shapes.split(","))
    except ValueError:
        raise SystemExit(f"--shapes: each must be one of {', '.join(SHAPES)}") from None
    data, run_file = args.work / "data", args.work / "run.json"
    if not (data / "manifest.json").is_file():
        log(f"writing {args.clips} single-object clips of {args.shapes}")
        write_shapes(data, shapes, args.clips)
    if not run_file.is_file():
        preset = get_preset(DEMO["preset"])
        preset = preset.model_copy(update={"backbone": preset.backbone.model_copy(update={"frames": args.frames})})
        init_run(data, DEMO["clusters"], preset=preset, seed=0, name="shape-drawing",
                 target_steps=args.steps).save(run_file)
    spec = RunSpec.load(run_file)
    judge = cached_judge(args.judge, on_step=lambda i, total: i == 1 and log("training the judge (once)"))
    expert = load_expert(train_to(spec, args.work / f"expert_{DEMO['cluster']}", args.steps))
    majority = spec.balance.clusters[DEMO["cluster"]].majority
    colour, background = majority["colour"], majority["background"]
    rows, strips = {}, []
    for s in shapes:
        prompt = f"a {colour} {SHAPES[s]} {MOTION_PHRASES['left'][0]} on a {background} background"
        row: dict = {"prompt": prompt}
        for scale in (DEMO["guidance"], 1.0):
            videos = sample(expert, prompt, steps=DEMO["sample_steps"], guidance=scale, seed=0, num_videos=args.n)
            seen = judge.predict(videos)[:, 0]
            counts = {SHAPES[k]: int((seen == k).sum()) for k in sorted(set(seen.tolist()))}
            row[f"guidance {scale:g}"] = {"drawn": round(float((seen == s).mean()), 4), "judge_sees": counts}
            if scale == DEMO["guidance"]:
                strips.append(frame_strip(videos[:4]))
        real = real_clips(s, ATTRIBUTES["colour"].index(colour), ATTRIBUTES["background"].index(background), args.n)
        row["judge_on_real_clips"] = round(float((judge.predict(real)[:, 0] == s).mean()), 4)
        rows[SHAPES[s]] = row
    if args.strip:
        write_image(args.strip, np.concatenate(strips, axis=0))
    result = {"shapes": [SHAPES[s] for s in shapes], "steps": args.steps, "frames": args.frames,
              "clips": args.clips, "n": args.n, "threads": torch.get_num_threads(), "per_shape": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"the demo's expert ({DEMO['preset']}, {args.frames} frames, {args.steps} steps) trained only on single "
          f"{', '.join(result['shapes'])}; {args.n} samples per prompt")
    guided = f"guidance {DEMO['guidance']:g}"
    for name, row in rows.items():
        print(f"  {name:9} drawn (judge) at {guided}: {row[guided]['drawn']:.2f}, at guidance 1: "
              f"{row['guidance 1']['drawn']:.2f} (judge on real clips {row['judge_on_real_clips']:.2f}); "
              f"judge sees {row[guided]['judge_sees']}")


if __name__ == "__main__":
    main()
