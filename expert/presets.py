"""Named expert presets. `tiny` is for CPU tests, `small` for the CPU demo, `base`/`large` for GPUs (latent
space through a video VAE), `tiny-latent` the latent path at test size (CPU, a small random-init VAE). The
VAE and pretrained text weights are assets named by CID (protocol.model.Asset), never paths."""

from __future__ import annotations

from protocol.errors import ParisError
from protocol.model import Asset, BackboneConfig, ExpertPreset, TextEncoderConfig, TrainConfig

PRESETS = ("tiny", "small", "tiny-latent", "base", "large")
LATENT_PRESETS = ("tiny-latent", "base", "large")  # through a video VAE (an asset)


def get_preset(name: str, *, vae: Asset | None = None, text_model: str | None = None,
               text_weights: Asset | None = None) -> ExpertPreset:
    """The preset `name`; latent presets need the `vae` asset, and base/large take pretrained text weights."""
    if name in LATENT_PRESETS and vae is None:
        raise ParisError(f"preset {name!r} trains in latent space: pass --vae DIR (an AutoencoderKLWan folder)")
    if text_weights is not None and name not in ("base", "large"):
        raise ParisError(f"preset {name!r} uses a small random text tower: --text-weights is for base and large")
    if name == "tiny":
        return ExpertPreset(
            name="tiny",
            backbone=BackboneConfig(frames=8, height=32, width=32, patch_size=(2, 4, 4), num_layers=3,
                                    num_heads=3, head_dim=32, ffn_dim=256, freq_dim=64, prediction="x"),
            text=TextEncoderConfig(width=64, layers=1, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.99, target_steps=400,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name == "small":
        return ExpertPreset(
            name="small",
            backbone=BackboneConfig(frames=16, height=32, width=32, patch_size=(2, 4, 4), num_layers=4,
                                    num_heads=4, head_dim=32, ffn_dim=512, freq_dim=64, prediction="x"),
            text=TextEncoderConfig(width=96, layers=2, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=50, ema_decay=0.995, target_steps=1000,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name == "tiny-latent":  # a VAE with 4 latent channels, 2× down in time and 2× in space (tests make one)
        return ExpertPreset(
            name="tiny-latent",
            backbone=BackboneConfig(space="latent", vae=vae, in_channels=4, frames=9, height=32, width=32,
                                    patch_size=(1, 2, 2), num_layers=2, num_heads=2, head_dim=16, ffn_dim=128,
                                    freq_dim=32, prediction="x"),
            text=TextEncoderConfig(width=64, layers=1, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.99, target_steps=400,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name in LATENT_PRESETS:
        big = name == "large"
        text = TextEncoderConfig(model_name=text_model or "ViT-B-32", weights=text_weights, context_length=77,
                                 width=512, layers=12, heads=8)
        return ExpertPreset(
            name=name,
            backbone=BackboneConfig(space="latent", vae=vae, in_channels=16,
                                    frames=49 if big else 33, height=256, width=256, patch_size=(1, 2, 2),
                                    num_layers=24 if big else 12, num_heads=16 if big else 12, head_dim=64,
                                    ffn_dim=4096 if big else 3072, freq_dim=256),
            text=text,
            train=TrainConfig(batch_size=16 if big else 32, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
                              target_steps=200_000 if big else 100_000, checkpoint_every=2000, logit_normal_mean=1.0),
        )
    raise ParisError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
