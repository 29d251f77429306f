"""Does the demo's expert do what its prompts say? Trains the expert `paris-node demo` trains (same data,
clustering, preset and seeds) to its default budget, and at half and full budget reports, on evaluation
prompts of its own cluster: the synthetic-data judge's colour, shape, motion and background accuracy beside
the judge's ceiling on the real clips of those prompts, FVD-synth against those real clips, and the
conditioning ratio ‖v_c − v_u‖ / ‖v_u‖ per noise level, and the judge's accuracy on the one-step x̂₀ with and
without the caption per level (where the caption is needed, and whether it is used there). Also samples
the demo's own prompt as the demo does and writes a frame strip (`--strip`, for the README).

Targets at the default budget (issue "prompts must steer the video"): colour ≥ 0.6, background ≥ 0.9,
conditioning ratio ≥ 0.1 at t = 0.5.

    python benchmarks/demo_quality.py [--steps 3000] [--n 48] [--work DIR] [--strip docs/demo_strip.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from expert.checkpoint import read_meta, resolve_checkpoint
from expert.conditioning import conditioning_ratio, denoised_accuracy
from expert.evaluate import evaluate_synthetic, prompts_of_cluster
from expert.run_init import init_run
from expert.sampling import load_expert, sample, sample_prompts
from expert.synth import MOTION_PHRASES
from expert.synth_classifier import cached_judge
from expert.synth_dataset import write_synthetic
from expert.train_expert import trainer_for_run
from expert.video_io import frame_strip, write_image
from node.cli_options import DEMO_STEPS
from protocol.atomic import atomic_write_text
from protocol.run import RunSpec

TARGETS = {"colour": 0.6, "background": 0.9, "conditioning_t=0.5": 0.1}
DEMO = {"clips": 2000, "clusters": 3, "cluster": 0, "preset": "small", "sample_steps": 30, "guidance": 4.0}


def log(msg: str) -> None:
    print(f"[demo_quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def demo_prompt(spec: RunSpec, cluster: int) -> str:
    """The prompt `paris-node demo` samples: its cluster's majority attributes."""
    m = spec.balance.clusters[cluster].majority
    motion = MOTION_PHRASES.get(m.get("motion", "left"), ("moving left",))[0]
    return (f"a {m.get('colour', 'red')} {m.get('shape', 'square')} {motion} "
            f"on a {m.get('background', 'dark')} background")


def prepare(work: Path, steps: int) -> RunSpec:
    data, run_file = work / "data", work / "run.json"
    if not (data / "manifest.json").is_file():
        log(f"writing {DEMO['clips']} synthetic clips")
        write_synthetic(data, clips=DEMO["clips"], seed=0, frames=16, height=32, width=32)
    if not run_file.is_file():
        spec = init_run(data, DEMO["clusters"], preset_name=DEMO["preset"], seed=0, name="demo", target_steps=steps)
        spec.save(run_file)
    return RunSpec.load(run_file)


def train_to(spec: RunSpec, ckpt: Path, steps: int) -> Path:
    """Train (or resume) the demo expert to `steps`, one checkpoint at the end; returns its folder."""
    done = read_meta(resolve_checkpoint(ckpt)).step if (ckpt / "LATEST").is_file() else 0
    if done < steps:
        trainer = trainer_for_run(spec, DEMO["cluster"])
        if done:
            trainer.load(resolve_checkpoint(ckpt))
        log(f"training steps {done} → {steps}")
        start = time.perf_counter()
        trainer.train(steps - done, checkpoint_dir=ckpt, checkpoint_every=steps - done)
        log(f"trained in {time.perf_counter() - start:.0f} s")
    return resolve_checkpoint(ckpt)


def measure(path: Path, judge, prompts, n_cond: int) -> dict:
    expert = load_expert(path)

    def gen(captions, seed, scale=DEMO["guidance"]):
        return sample_prompts(expert, captions, steps=DEMO["sample_steps"], guidance=scale, seed=seed)

    start = time.perf_counter()
    report = evaluate_synthetic(gen, judge, prompts=prompts)
    plain = evaluate_synthetic(lambda c, s: gen(c, s, 1.0), judge, prompts=prompts)
    real, present, captions = prompts
    report["attribute_accuracy_without_guidance"] = plain["attribute_accuracy"]
    report["conditioning_ratio"] = conditioning_ratio(expert.model, expert.text, expert.codec, real[:n_cond],
                                                      captions[:n_cond])
    report["denoised_accuracy"] = denoised_accuracy(expert.model, expert.text, expert.codec, judge, real, present,
                                                    captions)
    report["eval_seconds"] = round(time.perf_counter() - start, 1)
    report["step"] = read_meta(path).step
    return report


def parse_with_work_options(ap: argparse.ArgumentParser, *, work: Path, strip: str) -> argparse.Namespace:
    """Add the options every expert-training benchmark shares (work folder, judge, strip, threads, --json),
    parse, and set torch's CPU threads."""
    ap.add_argument("--work", type=Path, default=work, help="data, run and checkpoints (reused)")
    ap.add_argument("--judge", type=Path, default=Path.home() / ".paris" / "synth-judge")
    ap.add_argument("--strip", type=Path, help=f"write {strip} here")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=DEMO_STEPS, help="the demo's default budget (also measured at half)")
    ap.add_argument("--n", type=int, default=48, help="evaluation prompts of the expert's cluster")
    args = parse_with_work_options(ap, work=Path("demo-quality"), strip="a PNG frame strip of the demo's sample")
    work = args.work
    spec = prepare(work, args.steps)
    judge = cached_judge(args.judge, on_step=lambda i, total: i == 1 and log("training the judge (once)"))
    prompts = prompts_of_cluster(spec, DEMO["cluster"], args.n)
    budgets = {"half": args.steps // 2, "default": args.steps}
    reports, ckpt = {}, work / f"expert_{DEMO['cluster']}"
    for name, steps in budgets.items():  # one training: the half budget is measured on the way
        cached = work / f"report-{steps}-{args.n}.json"
        if cached.is_file() and json.loads(cached.read_text()).get("judge") == judge.heldout_accuracy:
            reports[name] = json.loads(cached.read_text())["report"]
            continue
        path = train_to(spec, ckpt, steps)
        if read_meta(path).step != steps:
            raise SystemExit(f"{ckpt} is past {steps} steps: use a new --work to measure this budget")
        log(f"evaluating the {name} budget ({steps} steps) on {args.n} prompts")
        reports[name] = measure(path, judge, prompts, n_cond=16)
        atomic_write_text(cached, json.dumps({"judge": judge.heldout_accuracy, "report": reports[name]}))
    prompt = demo_prompt(spec, DEMO["cluster"])
    final = load_expert(resolve_checkpoint(ckpt))
    videos = sample(final, prompt, steps=DEMO["sample_steps"], guidance=DEMO["guidance"], seed=0, num_videos=4)
    if args.strip:
        write_image(args.strip, frame_strip(videos))
    best = reports["default"]
    checks = {"colour": best["attribute_accuracy"]["colour"], "background": best["attribute_accuracy"]["background"],
              "conditioning_t=0.5": best["conditioning_ratio"]["t=0.5"]}
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "demo": DEMO | {"steps": args.steps}, "demo_prompt": prompt, "n": args.n,
              "judge_heldout_accuracy": judge.heldout_accuracy, "budgets": budgets, "reports": reports,
              "targets": TARGETS, "met": {k: v >= TARGETS[k] for k, v in checks.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"demo expert (preset {DEMO['preset']}, cluster {DEMO['cluster']} of {DEMO['clusters']}), "
          f"{args.n} prompts of its cluster; judge held-out: "
          + ", ".join(f"{k} {v:.2f}" for k, v in judge.heldout_accuracy.items()))
    for name, r in reports.items():
        acc, ceil, plain = (r["attribute_accuracy"], r["attribute_accuracy_on_real_clips"],
                            r["attribute_accuracy_without_guidance"])
        print(f"{name} budget, {r['step']} steps: FVD-synth {r['fvd_synth']:.2f}; high-frequency energy "
              f"{r['high_frequency_ratio']:.2f}× real; text use "
              + ", ".join(f"{t} {v:.3f}" for t, v in r["conditioning_ratio"].items()))
        for a in acc:
            print(f"  {a:10} {acc[a]:.3f}  without guidance {plain[a]:.3f}  (judge on real clips {ceil[a]:.3f})")
        for t, d in r.get("denoised_accuracy", {}).items():
            print(f"  one-step x̂₀ at {t}, with / without the caption: "
                  + ", ".join(f"{a} {d['with_caption'][a]:.2f} / {d['without_caption'][a]:.2f}" for a in acc))
    print("targets at the default budget: "
          + ", ".join(f"{k} {checks[k]:.3f} {'≥' if ok else '<'} {TARGETS[k]}" for k, ok in result["met"].items()))
    print(f"demo prompt: {prompt!r}" + (f"; frame strip: {args.strip}" if args.strip else ""))


if __name__ == "__main__":
    main()
