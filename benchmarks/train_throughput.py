"""Training throughput of the `tiny` and `small` presets on this machine, and the harness overhead:
samples/s of `ExpertTrainer.train` (batch sampling, EMA, finite checks, callbacks) divided by samples/s of a
bare loop (zero_grad, forward, MSE, backward, AdamW step) over the same model and a fixed batch, measured
interleaved in one run so that machine noise hits both alike. Target: ratio ≥ 0.95.

    python benchmarks/train_throughput.py [--presets tiny small] [--steps 20] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from expert.flow import noisy, timestep
from expert.presets import get_preset
from expert.synth_dataset import synth_batch
from expert.train_expert import ExpertTrainer


def bare_steps(trainer: ExpertTrainer, batch, steps: int) -> float:
    """Seconds per step of the minimal loop over the trainer's own model and optimizer."""
    x0, noise, t, text = batch
    model, opt = trainer.model, trainer.opt
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        xt, target = noisy(x0, noise, t)
        loss = nn.functional.mse_loss(model(xt, timestep(t), text, return_dict=False)[0], target)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def harness_steps(trainer: ExpertTrainer, steps: int) -> float:
    progress = []
    start = time.perf_counter()
    trainer.train(steps, on_progress=progress.append)
    return (time.perf_counter() - start) / steps


def measure(preset_name: str, steps: int, rounds: int) -> dict:
    preset = get_preset(preset_name)
    b = preset.backbone
    clips = synth_batch(0, 0, 64, 16, b.height, b.width)
    trainer = ExpertTrainer(preset, clips)
    batch = trainer._micro_batch()
    bare_steps(trainer, batch, 2)  # warm-up both paths
    harness_steps(trainer, 2)
    bare, ours = [], []
    for _ in range(rounds):
        bare.append(bare_steps(trainer, batch, steps))
        ours.append(harness_steps(trainer, steps))
    bs = preset.train.batch_size * preset.train.grad_accum
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    return {"preset": preset_name, "params": sum(p.numel() for p in trainer.model.parameters()),
            "batch": bs, "bare_samples_per_s": round(bs / bare_s, 2), "ours_samples_per_s": round(bs / ours_s, 2),
            "ratio": round(bare_s / ours_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [measure(p, args.steps, args.rounds) for p in args.presets]
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}))
        return
    print(f"machine: {machine}")
    print(f"{'preset':8} {'params':>10} {'batch':>5} {'bare s/s':>9} {'ours s/s':>9} {'ratio':>6}")
    for r in results:
        print(f"{r['preset']:8} {r['params']:>10,} {r['batch']:>5} {r['bare_samples_per_s']:>9} "
              f"{r['ours_samples_per_s']:>9} {r['ratio']:>6}")


if __name__ == "__main__":
    main()
