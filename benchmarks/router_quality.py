"""The light router against the full-size one, mode by mode and noise level by noise level, in one run.

On the built-in synthetic data clustered as `run init` does, it trains the run's router (expert.router_preset.
run_router_preset: light trunk, caption-reading with caption dropout, caption prior, uniform t) and the
same router at full size (the experts' own backbone), both for the same number of steps, and the light one
also for the full one's FLOPs (compute-matched). For each, on every cluster's held-out clips: accuracy,
NLL and expected calibration error of every routing mode (xt, joint, caption, combined) at t from 0.1 to 1
(expert.validation.router_report), the FLOPs of one routing decision against one expert forward, and the
training time. `combined`'s calibration beside `joint`'s is the measure of how wrong its
conditional-independence assumption is on this data.

    python benchmarks/router_quality.py [--preset tiny] [--clips 1200] [--clusters 3] [--steps 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from expert.backbone import build_backbone, build_codec
from expert.presets import get_preset
from expert.router_preset import router_preset, run_router_preset
from expert.run_init import init_run
from expert.synth_dataset import write_synthetic
from expert.train_router import router_trainer_for_run
from expert.validation import router_report


def decision_flops(router: torch.nn.Module, preset) -> dict[str, float]:
    """FLOPs of one routing decision per mode, over one expert forward (one video)."""
    width = preset.text.width
    x = torch.randn(1, *build_codec(preset.backbone).latent_shape())
    t, cond = torch.tensor([500.0]), torch.randn(1, 32, width)

    def count(fn) -> int:
        with FlopCounterMode(display=False) as c, torch.no_grad():
            fn()
        return c.get_total_flops()

    one = count(lambda: build_backbone(preset.backbone, width).eval()(x, t, cond, return_dict=False))
    return {m: round(count(lambda m=m: router.posterior(x, t, cond, torch.zeros_like(cond), m)) / one, 4)
            for m in router.head.modes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clips", type=int, default=1200)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    work = args.work or Path(tempfile.mkdtemp(prefix="router-quality-"))
    b = preset.backbone
    data = work / f"data-{args.clips}-{max(16, b.frames)}x{b.height}x{b.width}"
    if not (data / "manifest.json").is_file():
        write_synthetic(data, clips=args.clips, seed=0, frames=max(16, b.frames), height=b.height, width=b.width)
    spec = init_run(data, args.clusters, preset=preset, seed=0, name="router-quality")
    light = run_router_preset(spec)
    full = router_preset(spec.preset, spec.num_clusters, light=False, data_sizes=light.router.cluster_prior)
    results = {}
    for name, rp, steps in (("light", light, args.steps), ("full-size", full, args.steps)):
        results[name] = _train_and_report(spec, rp, steps)
    ratio = results["full-size"]["train_flops_per_step"] / results["light"]["train_flops_per_step"]
    matched = round(args.steps * ratio)
    results["light, full-size's FLOPs"] = _train_and_report(spec, light, matched)
    out = {"preset": args.preset, "clips": args.clips, "clusters": args.clusters, "steps": args.steps,
           "compute_matched_light_steps": matched, "threads": torch.get_num_threads(), "routers": results}
    if args.json:
        print(json.dumps(out))
        return
    for name, r in results.items():
        print(f"{name}: {r['steps']} steps in {r['train_s']:.0f} s; FLOPs per decision / one expert forward "
              f"{r['decision_flops']}")
        for mode, levels in r["report"]["modes"].items():
            print(f"  {mode:9} acc " + " ".join(f"{t}:{v['accuracy']:.2f}" for t, v in levels.items())
                  + f"  | ECE t=0.5 {levels['t=0.5']['ece']:.3f} t=1 {levels['t=1']['ece']:.3f}")
    sys.stdout.flush()


def _train_and_report(spec, preset, steps: int) -> dict:
    trainer = router_trainer_for_run(spec, preset=preset)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    per_step = counter.get_total_flops()
    t0 = time.perf_counter()
    trainer.train(steps - 1)
    elapsed = time.perf_counter() - t0
    return {"steps": steps, "train_s": round(elapsed, 1), "train_flops_per_step": per_step,
            "decision_flops": decision_flops(trainer.ema, spec.preset),
            "report": router_report(trainer.ema, trainer.held)}


if __name__ == "__main__":
    main()
