"""Training throughput, peak memory and model-FLOPs utilisation (MFU) of the expert presets on whatever device
it runs on; written for a GPU (`base`, `large`), runs unchanged on a CPU (`tiny`, `small`) as a smoke check.

Per preset, measured interleaved in one run (noise hits both alike):
  bare:    zero_grad, bf16-autocast forward, MSE, backward, AdamW step (fused on CUDA) over the model and one
           fixed batch of latents: the step a trainer reading cached latents runs.
  trainer: `ExpertTrainer.train`, the loop the daemon's driver runs (batch sampling, text states, EMA,
           finite checks; latent presets read the latents the trainer encoded once when it was built).
Reported: samples/s of both and their ratio, peak device memory of each, FLOPs per step (counted by
torch.utils.flop_counter on one bare step: matmuls and attention, forward + backward), achieved TFLOP/s and
MFU against the device's dense bf16 peak (a table of common GPUs, or --peak-tflops), and for latent presets
the VAE's seconds per clip (what building a trainer costs per clip of its cluster).

Latent presets need a VAE: `--vae DIR` (a local AutoencoderKLWan folder), else a random-init
AutoencoderKLWan with diffusers' default (Wan 2.1) architecture is written to a temporary folder: the same
FLOPs as the pretrained one. Frames are random pixels of the preset's shape (content does not change the cost).

    python benchmarks/gpu_throughput.py --gpu 0 [--presets base large] [--steps 10] [--rounds 2] \
        [--compile] [--grad-checkpointing auto|on|off] [--batch N] [--peak-tflops T] [--json]
    python benchmarks/gpu_throughput.py --gpu cpu --presets tiny --steps 2 --rounds 1   # smoke check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from expert.device import resolve_device
from expert.efficiency import Efficiency, checkpointing_on
from expert.flow import noisy, timestep
from expert.presets import LATENT_PRESETS, get_preset
from expert.shards import ClipBatch
from expert.synth_dataset import synth_batch
from expert.train_expert import ExpertTrainer
from expert.train_inputs import encode_clips
from protocol.model import ExpertPreset

# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets; SXM parts where there are several)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "L40": 181.0, "A6000": 155.0, "RTX 6000 Ada": 364.0, "4090": 165.0,
                    "3090": 71.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0}


def peak_for_name(name: str) -> float | None:
    """The table's peak for a device name such as 'NVIDIA H200' (the longest matching key wins)."""
    return next((v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    return peak_for_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def random_vae(folder: Path) -> str:
    from diffusers import AutoencoderKLWan

    AutoencoderKLWan().save_pretrained(folder)
    return str(folder)


def preset_for(name: str, vae: str | None, batch: int | None) -> ExpertPreset:
    from expert.assets import asset_of

    preset = get_preset(name, vae=asset_of(vae) if vae else None)
    if batch:
        preset = preset.model_copy(update={"train": preset.train.model_copy(update={"batch_size": batch})})
    return preset


def random_clips(preset: ExpertPreset, n: int) -> ClipBatch:
    """`n` clips of the preset's frame shape with synthetic captions; pixels are noise."""
    b = preset.backbone
    captions = synth_batch(0, 0, n, 2, 8, 8)
    frames = np.random.default_rng(0).integers(0, 256, (n, b.frames, b.height, b.width, 3), dtype=np.uint8)
    return ClipBatch(frames, captions.tokens, captions.captions, captions.attributes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def bare_step(trainer: ExpertTrainer, batch) -> None:
    x0, noise, t, text = batch
    trainer.opt.zero_grad(set_to_none=True)
    xt, target = noisy(x0, noise, t)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.device.type == "cuda"):
        pred = trainer.model(xt, timestep(t), text, return_dict=False)[0]
    nn.functional.mse_loss(pred.float(), target).backward()
    trainer.opt.step()


def timed(fn, steps: int, device: torch.device) -> tuple[float, float | None]:
    """Seconds per step, peak GiB."""
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    fn(steps)
    _sync(device)
    return (time.perf_counter() - start) / steps, _peak_gib(device)


def measure(name: str, device: torch.device, args, vae_dir: Path) -> dict:
    vae = None
    if name in LATENT_PRESETS:
        vae = args.vae or (str(vae_dir) if (vae_dir / "config.json").is_file() else random_vae(vae_dir))
    preset = preset_for(name, vae, args.batch)
    bs = preset.train.batch_size * preset.train.grad_accum
    efficiency = Efficiency(compile=args.compile, grad_checkpointing=args.grad_checkpointing)
    clips = random_clips(preset, max(2 * preset.train.batch_size, 8))
    trainer = ExpertTrainer(preset, clips, device=device, efficiency=efficiency)
    encode_s = None
    if trainer.latents is not None:  # once more, timed: the VAE's cost per clip
        frames = torch.from_numpy(clips.frames[:8])
        _sync(device)
        t0 = time.perf_counter()
        encode_clips(trainer.codec, frames, device)
        _sync(device)
        encode_s = round((time.perf_counter() - t0) / len(frames), 4)
    with torch.no_grad():
        batch = tuple(v.to(device) for v in trainer._micro_batch())  # latents, encoded once

    def bare(n: int) -> None:
        for _ in range(n):
            bare_step(trainer, batch)

    def ours(n: int) -> None:
        trainer.train(n)

    # warm-up (and the first out-of-memory retry, if any, happens here); then count one bare step's FLOPs
    ours(args.warmup)
    bare(args.warmup)
    with FlopCounterMode(display=False) as counter:
        bare_step(trainer, batch)
    flops = counter.get_total_flops()
    bare_s, ours_s, bare_mem, ours_mem = [], [], [], []
    for _ in range(args.rounds):
        s, m = timed(bare, args.steps, device)
        bare_s.append(s)
        bare_mem.append(m)
        s, m = timed(ours, args.steps, device)
        ours_s.append(s)
        ours_mem.append(m)
    bare_t, ours_t = statistics.median(bare_s), statistics.median(ours_s)
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops / bare_t / 1e12
    return {
        "preset": name, "params": sum(p.numel() for p in trainer.model.parameters()), "batch": bs,
        "latent_shape": list(trainer.codec.latent_shape()), "tokens": _tokens(preset, trainer),
        "bare_samples_per_s": round(bs / bare_t, 3), "trainer_samples_per_s": round(bs / ours_t, 3),
        "trainer_over_bare": round(bare_t / ours_t, 3),
        "bare_peak_gib": max(bare_mem, default=None) if device.type == "cuda" else None,
        "trainer_peak_gib": max(ours_mem, default=None) if device.type == "cuda" else None,
        "tflop_per_step": round(flops / 1e12, 4), "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak, 4) if peak else None, "peak_tflops": peak,
        "grad_checkpointing": checkpointing_on(trainer.model), "compiled": args.compile,
        "seconds_per_1k_steps": round(1000 * ours_t, 1), "vae_encode_s_per_clip": encode_s,
    }


def _tokens(preset: ExpertPreset, trainer: ExpertTrainer) -> int:
    _, t, h, w = trainer.codec.latent_shape()
    pt, ph, pw = preset.backbone.patch_size
    return (t // pt) * (h // ph) * (w // pw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="0", help="CUDA device index, or cpu")
    ap.add_argument("--presets", nargs="+", default=["base", "large"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and path")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, help="override the preset's batch size")
    ap.add_argument("--vae", help="local AutoencoderKLWan folder (default: random-init, same architecture)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--grad-checkpointing", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from a table)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.gpu)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               (platform.processor() or platform.machine()), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(p, device, args, Path(tmp)) for p in args.presets]
    if args.json:
        print(json.dumps({"machine": machine, "results": results}))
        return
    print(f"machine: {machine}")
    cols = ("preset", "params", "batch", "tokens", "bare_samples_per_s", "trainer_samples_per_s", "trainer_over_bare",
            "bare_peak_gib", "trainer_peak_gib", "tflop_per_step", "achieved_tflops", "mfu", "grad_checkpointing",
            "seconds_per_1k_steps", "vae_encode_s_per_clip")
    for r in results:
        print("  ".join(f"{c}={r[c]}" for c in cols))


if __name__ == "__main__":
    main()
