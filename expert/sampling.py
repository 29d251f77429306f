"""Sampling videos from one expert with diffusers' FlowMatchEulerDiscreteScheduler and classifier-free
guidance (v = v_u + s·(v_c − v_u)). The ensemble form (router + mixing) builds on `velocity`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from expert.backbone import PixelCodec, build_backbone, build_codec
from expert.checkpoint import read_group, read_meta, resolve_checkpoint
from expert.text import TextEncoder, load_text_encoder
from protocol.checkpoint import CheckpointMeta
from protocol.errors import ConfigMismatchError
from protocol.model import ExpertPreset


@dataclass
class LoadedExpert:
    preset: ExpertPreset
    meta: CheckpointMeta
    model: torch.nn.Module
    text: TextEncoder
    codec: PixelCodec


def load_expert(path: Path, device: torch.device | str = "cpu", *, like: LoadedExpert | None = None) -> LoadedExpert:
    """The EMA weights of a verified checkpoint (a checkpoint folder or a training folder's LATEST). `like`: an
    expert loaded before: its text encoder and codec are reused when this one's config names the same (an
    ensemble of K experts loads a multi-GB encoder and the VAE once, not K times)."""
    path = resolve_checkpoint(Path(path))
    meta = read_meta(path)
    same = like is not None and like.preset.text == meta.preset.text and like.preset.backbone == meta.preset.backbone
    text = like.text if like is not None and same else load_text_encoder(meta.preset.text)
    model = build_backbone(meta.preset.backbone, text.width)
    try:
        model.load_state_dict(read_group(path, meta, "ema"))
    except RuntimeError as e:
        raise ConfigMismatchError(f"checkpoint {path} does not fit its own config: {str(e).splitlines()[0]}") from None
    model.eval().requires_grad_(False).to(device)
    codec = like.codec.to(device) if like is not None and same else build_codec(meta.preset.backbone).to(device)
    return LoadedExpert(meta.preset, meta, model, text, codec)


def encode_prompts(text: TextEncoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the prompts' states, the empty prompt's) from either kind of text encoder (expert.text)."""
    cond = text.encode_captions(list(prompts))
    null = text.encode_captions([""]).expand_as(cond)
    return cond, null


def precision(model: torch.nn.Module, device: torch.device) -> torch.autocast:
    """How a network runs: bf16 autocast on CUDA (or its own reduced dtype), and on the CPU in its own dtype
    (float32 unless the user loaded it in another, e.g. `from_pretrained(..., torch_dtype=torch.bfloat16)`)."""
    dtype = next(model.parameters(), torch.empty(())).dtype  # a network without weights runs in float32
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if dtype == torch.float32 else dtype)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def velocity(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
             guidance: float) -> torch.Tensor:
    """Guided velocity of one expert; conditional and unconditional passes share one batch."""
    ts = t.expand(x.shape[0]).to(x)
    with precision(model, x.device):
        if guidance == 1.0:
            return model(x, ts, cond, return_dict=False)[0].float()
        both = model(torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([cond, null]), return_dict=False)[0].float()
    v_c, v_u = both.chunk(2)
    return v_u + guidance * (v_c - v_u)


@torch.no_grad()
def sample(expert: LoadedExpert, prompt: str, *, steps: int = 30, guidance: float = 4.0, seed: int = 0,
           num_videos: int = 1, device: torch.device | str = "cpu", on_step=None) -> np.ndarray:
    """N×T×H×W×3 uint8 videos for `prompt`; the same seed gives the same videos."""
    return sample_prompts(expert, [prompt] * num_videos, steps=steps, guidance=guidance, seed=seed, device=device,
                          on_step=on_step)


@torch.no_grad()
def sample_prompts(expert: LoadedExpert, prompts: list[str], *, steps: int = 30, guidance: float = 4.0,
                   seed: int = 0, device: torch.device | str = "cpu", on_step=None) -> np.ndarray:
    """One video per prompt, as one batch."""
    return sample_network(expert.model, expert.text, expert.codec, prompts, steps=steps, guidance=guidance,
                          seed=seed, device=device, on_step=on_step)


@torch.no_grad()
def sample_network(model: torch.nn.Module, text: TextEncoder, codec: PixelCodec, prompts: list[str], *,
                   steps: int = 30, guidance: float = 4.0, seed: int = 0, device: torch.device | str = "cpu",
                   on_step=None) -> np.ndarray:
    """One video per prompt from one expert network (e.g. one of an ensemble's), as one batch."""
    device = torch.device(device)
    num_videos = len(prompts)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(steps, device=device)
    cond, null = encode_prompts(text, prompts)
    cond, null = cond.to(device), null.to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((num_videos, *codec.latent_shape()), generator=g).to(device)
    for i, t in enumerate(scheduler.timesteps):
        v = velocity(model, x, t, cond, null, guidance)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if on_step:
            on_step(i + 1, steps)
    return codec.decode(x).cpu().numpy()
