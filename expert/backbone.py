"""Building the expert network and the codec between video frames and the space it denoises in."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from einops import rearrange
from torch import nn

from protocol.errors import ParisError
from protocol.model import BackboneConfig


def build_backbone(cfg: BackboneConfig, text_dim: int, *, seed: int = 0,
                   out_channels: int | None = None) -> WanTransformer3DModel:
    """A diffusers Wan video transformer; text enters by cross-attention on the token states."""
    channels = cfg.in_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(
            patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            in_channels=channels, out_channels=out_channels or channels, text_dim=text_dim, freq_dim=cfg.freq_dim,
            ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PixelCodec(nn.Module):
    """uint8 B×T×H×W×3 ↔ float B×3×T×H×W in [-1, 1], resampled to the preset's frames and size."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.cfg.in_channels, self.cfg.frames, self.cfg.height, self.cfg.width)

    def to_model_frames(self, frames: torch.Tensor) -> torch.Tensor:
        x = rearrange(frames, "b t h w c -> b c t h w").float().div(127.5).sub(1.0)
        t, h, w = self.cfg.frames, self.cfg.height, self.cfg.width
        if x.shape[2] != t and x.shape[2] % t == 0:
            x = x[:, :, :: x.shape[2] // t]  # an integer stride keeps frames sharp (no blending)
        if x.shape[2:] != (t, h, w):
            x = nn.functional.interpolate(x, size=(t, h, w), mode="trilinear", align_corners=False)
        return x

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.to_model_frames(frames)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x.float(), "b c t h w -> b t h w c")
        return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class WanVaeCodec(PixelCodec):
    """Latent space through a diffusers `AutoencoderKLWan` loaded from a local folder (frozen),
    normalised with the VAE's own latents_mean / latents_std."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__(cfg)
        from diffusers import AutoencoderKLWan

        try:
            self.vae = AutoencoderKLWan.from_pretrained(cfg.vae_path)
        except (OSError, ValueError) as e:
            raise ParisError(f"cannot load the video VAE from {cfg.vae_path}: {e}") from None
        self.vae.requires_grad_(False).eval()
        c = self.vae.config
        if c.z_dim != cfg.in_channels:
            raise ParisError(f"the VAE has {c.z_dim} latent channels, the preset expects {cfg.in_channels}")
        self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        self.t_down = 2 ** sum(c.temperal_downsample)
        self.s_down = 2 ** len(c.temperal_downsample)

    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.cfg.in_channels, (self.cfg.frames - 1) // self.t_down + 1,
                self.cfg.height // self.s_down, self.cfg.width // self.s_down)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.to_model_frames(frames)
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()
        return (z.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((z * self.std + self.mean).to(self.vae.dtype)).sample
        return super().decode(x)


def build_codec(cfg: BackboneConfig) -> PixelCodec:
    return WanVaeCodec(cfg) if cfg.space == "latent" else PixelCodec(cfg)
