"""Named expert presets. `tiny` is for CPU tests, `small` for the CPU demo, `base`/`large` for GPUs
(latent space through a video VAE from a local folder)."""

from __future__ import annotations

from protocol.errors import ParisError
from protocol.model import BackboneConfig, ExpertPreset, TextEncoderConfig, TrainConfig

PRESETS = ("tiny", "small", "base", "large")
LATENT_PRESETS = ("base", "large")  # through a video VAE (a local folder)


def get_preset(name: str, *, vae_path: str | None = None, text_model: str | None = None,
               text_weights: str | None = None) -> ExpertPreset:
    """The preset `name`; GPU presets need `vae_path`, and take pretrained text weights when given."""
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
    if name in LATENT_PRESETS:
        if not vae_path:
            raise ParisError(f"preset {name!r} trains in latent space: "
                             "pass --vae PATH (a local AutoencoderKLWan folder)")
        big = name == "large"
        text = TextEncoderConfig(model_name=text_model or "ViT-B-32", pretrained=text_weights, context_length=77,
                                 width=512, layers=12, heads=8)
        return ExpertPreset(
            name=name,
            backbone=BackboneConfig(space="latent", vae_path=vae_path, in_channels=16,
                                    frames=49 if big else 33, height=256, width=256, patch_size=(1, 2, 2),
                                    num_layers=24 if big else 12, num_heads=16 if big else 12, head_dim=64,
                                    ffn_dim=4096 if big else 3072, freq_dim=256),
            text=text,
            train=TrainConfig(batch_size=16 if big else 32, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
                              target_steps=200_000 if big else 100_000, checkpoint_every=2000, logit_normal_mean=1.0),
        )
    raise ParisError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
