"""Ready for the first GPU: the latent path end to end, with full-size random-init stand-ins of the real classes,
in one script that runs in under 8 minutes on one GPU (issue 27 item 6).

  1. Stand-ins, saved with `save_pretrained` as a researcher's folders would be: diffusers' `AutoencoderKLWan`
     (Wan 2.1's architecture) and a `transformers` `UMT5EncoderModel` with UMT5-XXL's shape (Wan's text
     encoder, 5.7 B parameters; its tokenizer is trained here on the synthetic captions: no hub).
  2. What `run init` does once per clip, timed: VAE encoding (s/clip) and text states (s/clip), through the
     same functions (expert.latent_data).
  3. Training on those latents and stored states (the encoder and VAE let go first, as on a volunteer's GPU):
     samples/s through `ExpertTrainer.train`, FLOPs of one step (torch's flop counter), MFU against the
     device's dense bf16 peak (benchmarks/gpu_throughput.py's table, or --peak-tflops), peak device memory.
  4. Same-seed agreement: two trainers from the same seed train the same steps; their weights must agree within
     the replay tolerance verifiers apply (relative to the update), as a verifier's replay would.

The expert is the `base` preset (33×256×256 video, a DiT-B-sized Wan transformer) or, with `--backbone
wan-1.3b`, Wan 2.1's 1.3 B transformer shape. `--toy` runs the same path at test size on any device (the CPU
smoke test in CI: tests/test_gpu_throughput.py).

    python benchmarks/gpu_check.py --gpu 0 [--backbone base|wan-1.3b] [--steps 10] [--clips 16] [--json]
    python benchmarks/gpu_check.py --gpu cpu --toy --steps 1 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_throughput import _peak_gib, _reset_peak, _sync, bare_step, peak_tflops
from torch.utils.flop_counter import FlopCounterMode

from expert.assets import asset_of
from expert.backbone import build_codec
from expert.device import resolve_device
from expert.latent_data import _encode_captions, _encode_frames
from expert.presets import get_preset
from expert.shards import ClipBatch, tokenize
from expert.synth import render_clip
from expert.text import load_text_encoder
from expert.train_expert import ExpertTrainer
from protocol.model import ExpertPreset
from protocol.swarm_run import Schedule

WAN_13B = {"patch_size": (1, 2, 2), "num_layers": 30, "num_heads": 12, "head_dim": 128, "ffn_dim": 8960,
           "freq_dim": 256}
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64}
UMT5_TOY = {"vocab_size": 96, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2}


def captions(n: int) -> list[str]:
    return [render_clip(0, i, 1, 8, 8)[1].caption for i in range(n)]


def save_vae(folder: Path, toy: bool) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4) \
        if toy else AutoencoderKLWan()
    vae.save_pretrained(folder)
    return folder


def save_encoder(folder: Path, toy: bool, device: torch.device) -> Path:
    """A UMT5 encoder (random init, built on `device` in bf16 when full-size: 5.7 B parameters) and a Unigram
    tokenizer trained on the synthetic captions, saved as `save_pretrained` folders are."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(captions(200), trainers.UnigramTrainer(vocab_size=90, unk_token="<unk>",
                                                                   special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    shape = UMT5_TOY if toy else UMT5_XXL
    torch.manual_seed(0)
    dtype = torch.float32 if toy or device.type != "cuda" else torch.bfloat16
    with torch.device(device):
        model = UMT5EncoderModel(UMT5Config(**shape, pad_token_id=0, eos_token_id=1)).to(dtype)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    del model
    return folder


def preset_for(vae: Path, encoder: Path, toy: bool, backbone: str, batch: int | None) -> ExpertPreset:
    preset = get_preset("tiny-latent" if toy else "base", vae=asset_of(vae),
                        vae_channels=4 if toy else 16, text_encoder=(asset_of(encoder), encoder))
    if backbone == "wan-1.3b" and not toy:
        preset = preset.model_copy(update={"backbone": preset.backbone.model_copy(update=WAN_13B)})
    if batch:
        preset = preset.model_copy(update={"train": preset.train.model_copy(update={"batch_size": batch})})
    return preset


def clock(device: torch.device) -> float:
    """Now, once the device has finished what it was given."""
    _sync(device)
    return time.perf_counter()


def encode_once(preset: ExpertPreset, n: int, device: torch.device, batch: int) -> tuple[ClipBatch, dict]:
    """`n` clips (noise pixels, synthetic captions) as `run init` leaves them: latents and stored text states."""
    b = preset.backbone
    caps = captions(n)
    frames = np.random.default_rng(0).integers(0, 256, (n, b.frames, b.height, b.width, 3), dtype=np.uint8)
    codec = build_codec(b).to(device)
    t0 = clock(device)
    latents = _encode_frames(codec, frames, device, batch, None)
    vae_s = clock(device) - t0
    del codec
    encoder = load_text_encoder(preset.text).to(device)
    t0 = clock(device)
    states = _encode_captions(encoder, caps, device, batch, None)
    text_s = clock(device) - t0
    null = _encode_captions(encoder, [""], device, 1, None)[0]
    del encoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    clips = ClipBatch(None, tokenize(caps), caps, latents=latents, text_states=states, text_null=null)
    return clips, {"vae_encode_s_per_clip": round(vae_s / n, 4), "text_states_s_per_clip": round(text_s / n, 4),
                   "latent_shape": list(latents.shape[1:]), "text_shape": list(states.shape[1:])}


def throughput(preset: ExpertPreset, clips: ClipBatch, device: torch.device, steps: int, peak: float | None) -> dict:
    trainer = ExpertTrainer(preset, clips, device=device, seed=0)
    assert trainer.text is None  # the encoder is never loaded to train
    trainer.train(1)  # warm-up (and an out-of-memory retry with gradient checkpointing, if one is needed)
    with torch.no_grad():
        batch = tuple(v.to(device) for v in trainer._micro_batch())
    with FlopCounterMode(display=False) as counter:
        bare_step(trainer, batch)
    _reset_peak(device)
    t0 = clock(device)
    trainer.train(steps)
    seconds = clock(device) - t0
    per_step = seconds / steps
    bs = preset.train.batch_size * preset.train.grad_accum
    achieved = counter.get_total_flops() / per_step / 1e12
    out = {"params": sum(p.numel() for p in trainer.model.parameters()), "batch": bs,
           "samples_per_s": round(bs / per_step, 3), "tflop_per_step": round(counter.get_total_flops() / 1e12, 4),
           "achieved_tflops": round(achieved, 3), "mfu": round(achieved / peak, 4) if peak else None,
           "peak_tflops": peak, "peak_gib": _peak_gib(device)}
    del trainer
    gc.collect()
    return out


def same_seed(preset: ExpertPreset, clips: ClipBatch, device: torch.device, steps: int) -> dict:
    """Two trainers from one seed, `steps` steps each: the larger of the model's and the EMA's distance,
    relative to the first one's update (what a verifier's replay compares against its tolerance)."""
    states = []
    for _ in range(2):
        trainer = ExpertTrainer(preset, clips, device=device, seed=0)
        start = {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}
        trainer.train(steps)
        states.append({g: {k: v.detach().float().cpu() for k, v in m.state_dict().items()}
                       for g, m in (("model", trainer.model), ("ema", trainer.ema))})
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def norm(d: dict) -> float:
        return float(torch.sqrt(sum((v.double() ** 2).sum() for v in d.values())))

    a, b = states
    rel = max(norm({k: a[g][k] - b[g][k] for k in a[g]}) / max(norm({k: a[g][k] - start[k] for k in a[g]}), 1e-12)
              for g in ("model", "ema"))
    tolerance = Schedule.model_fields["replay_tolerance"].default
    return {"relative_distance": rel, "tolerance": tolerance, "agree": rel <= tolerance, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="0", help="CUDA device index, or cpu")
    ap.add_argument("--toy", action="store_true", help="test-size stand-ins and the tiny-latent preset")
    ap.add_argument("--backbone", default="base", choices=("base", "wan-1.3b"))
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--agree-steps", type=int, default=2, help="steps of each same-seed trainer")
    ap.add_argument("--clips", type=int, default=16, help="clips encoded (and trained on)")
    ap.add_argument("--batch", type=int, help="override the preset's batch size")
    ap.add_argument("--encode-batch", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from a table)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    device = resolve_device(args.gpu)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               (platform.processor() or platform.machine()), "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory() as tmp:
        vae = save_vae(Path(tmp) / "vae", args.toy)
        encoder = save_encoder(Path(tmp) / "text_encoder", args.toy, device)
        preset = preset_for(vae, encoder, args.toy, args.backbone, args.batch)
        clips, encoding = encode_once(preset, args.clips, device, args.encode_batch)
        train = throughput(preset, clips, device, args.steps, peak_tflops(device, args.peak_tflops))
        agreement = same_seed(preset, clips, device, args.agree_steps)
    report = {"machine": machine, "preset": preset.name, "backbone": "toy" if args.toy else args.backbone,
              **encoding, **train, "same_seed": agreement, "elapsed_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
