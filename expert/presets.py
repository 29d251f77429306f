"""Named expert presets. `micro` is for the swarm's end-to-end tests, `tiny` for CPU tests, `small` for the CPU
demo, `base`/`large` for GPUs (latent space through a video VAE), `tiny-latent` the latent path at test size
(CPU, a small random-init VAE). The VAE (any diffusers VAE: expert.vae) and pretrained text weights are assets
named by CID (protocol.model.Asset), never paths."""

from __future__ import annotations

from pathlib import Path

from protocol.errors import ParisError
from protocol.model import Asset, BackboneConfig, ExpertPreset, TextEncoderConfig, TrainConfig
from protocol.run import RunSpec
from protocol.run_config import ModelConfig, RunConfig, TrainingConfig, VideoConfig

PRESETS = ("micro", "tiny", "small", "tiny-latent", "base", "large")
LATENT_PRESETS = ("tiny-latent", "base", "large")  # through a video VAE (an asset)


def get_preset(name: str, *, vae: Asset | None = None, vae_channels: int | None = None,
               text_model: str | None = None, text_weights: Asset | None = None,
               text_encoder: tuple[Asset, Path] | None = None,
               init_from: tuple[Asset, Path] | None = None) -> ExpertPreset:
    """The preset `name`. Latent presets need the `vae` asset (`vae_channels`: its latent channels, measured
    by expert.vae, else the preset's default). Any preset takes an open_clip `text_model` (an architecture
    name) and pretrained `text_weights` for it (default architecture ViT-B-32), or a `transformers`
    `text_encoder` (its asset and local folder: expert.text_hf), which reads the preset's number of tokens.
    `init_from` (a WanTransformer3DModel folder's asset and local path: expert.init_weights) gives the experts
    its shape and its weights as their initialisation."""
    if text_encoder is not None and (text_model is not None or text_weights is not None):
        raise ParisError("give either a transformers text encoder or an open_clip text tower, not both")
    if name in LATENT_PRESETS and vae is None:
        raise ParisError(f"preset {name!r} trains in latent space: pass --vae DIR (a diffusers VAE folder)")
    if vae_channels is not None and name not in LATENT_PRESETS:
        raise ParisError(f"preset {name!r} trains on pixels: it has no VAE")
    preset = _preset(name, vae, text_model, text_weights)
    if text_encoder is not None:
        from expert.text_hf import transformers_text

        preset = preset.model_copy(update={"text": transformers_text(text_encoder[1], text_encoder[0],
                                                                     preset.text.context_length)})
    if init_from is not None:
        from expert.init_weights import init_backbone

        backbone = init_backbone(init_from[1], init_from[0], preset.backbone, preset.text.width)
        preset = preset.model_copy(update={"backbone": backbone})
    if vae_channels is not None and vae_channels != preset.backbone.in_channels:
        backbone = preset.backbone.model_copy(update={"in_channels": vae_channels})
        preset = preset.model_copy(update={"backbone": backbone})
    return preset


def clip_shape(name: str, config: RunConfig | None = None) -> tuple[int, int, int]:
    """(frames, height, width) of a preset's clips (as `config` sets them): what its VAE must fit, asked before
    the VAE is an asset."""
    unnamed = Asset(cid="bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", bytes=1, name="vae")
    b = configure(_preset(name, unnamed, None, None), config).backbone
    return b.frames, b.height, b.width


_BACKBONE_FIELDS = {"layers": "num_layers", "heads": "num_heads", "head_dim": "head_dim", "ffn_dim": "ffn_dim",
                    "freq_dim": "freq_dim", "patch": "patch_size", "prediction": "prediction"}


def configure(preset: ExpertPreset, config: RunConfig | None) -> ExpertPreset:
    """`preset` with every field that `config` sets (its video, model and train tables) replaced: a preset is
    the named defaults of a config. Shapes a pixel model cannot patch exactly are refused here, in one line."""
    if config is None:
        return preset
    video = config.video.model_dump(exclude_none=True, exclude={"fps"})
    model = {_BACKBONE_FIELDS[k]: v for k, v in config.model.model_dump(exclude_none=True).items()}
    backbone = BackboneConfig.model_validate({**preset.backbone.model_dump(), **video, **model})
    train = TrainConfig.model_validate({**preset.train.model_dump(), **config.train.model_dump(exclude_none=True)})
    if backbone.space == "pixel":
        sizes = (backbone.frames, backbone.height, backbone.width)
        if any(s % p for s, p in zip(sizes, backbone.patch_size, strict=True)):
            raise ParisError(f"{'×'.join(map(str, sizes))} clips do not split into "
                             f"{'×'.join(map(str, backbone.patch_size))} patches: make frames, height and width "
                             "multiples of the patch (model.patch, video.*)")
    return preset.model_copy(update={"backbone": backbone, "train": train})


def check_latent_patch(backbone: BackboneConfig, latent: tuple[int, ...]) -> None:
    """A latent preset's patch must tile the VAE's latents (C×T×H×W) exactly."""
    if any(s % p for s, p in zip(latent[1:], backbone.patch_size, strict=True)):
        raise ParisError(f"the VAE's latents are {'×'.join(map(str, latent[1:]))}, which "
                         f"{'×'.join(map(str, backbone.patch_size))} patches do not tile: change video.* or "
                         "model.patch")


def open_clip_text(model: str, weights: Asset | None, context_length: int) -> TextEncoderConfig:
    """An open_clip architecture's text tower (its width, layers and heads from open_clip's own config)."""
    import open_clip

    config = open_clip.get_model_config(model)
    text = (config or {}).get("text_cfg") or {}
    if "width" not in text:
        raise ParisError(f"{model!r} is not an open_clip architecture with a text tower "
                         "(e.g. ViT-B-32, ViT-L-14: open_clip.list_models())")
    return TextEncoderConfig(model_name=model, weights=weights, context_length=min(context_length, 77),
                             width=text["width"], layers=text.get("layers", 12), heads=text.get("heads", 8))


def _preset(name: str, vae: Asset | None, text_model: str | None, text_weights: Asset | None) -> ExpertPreset:
    def text(**small) -> TextEncoderConfig:  # the preset's own small random tower unless a model is named
        if text_model is None and text_weights is None:
            return TextEncoderConfig(**small)
        return open_clip_text(text_model or "ViT-B-32", text_weights, small["context_length"])

    if name == "micro":  # tiny's clips, text tower and training in a 66k-parameter model: 1/9 of tiny's CPU a step
        # (8×8 patches: 64 tokens a clip against 256; 2 layers of width 32), for runs whose subject is the swarm
        # (leases, records, verification, replays, takeovers), not what the model learns
        tiny = _preset("tiny", vae, text_model, text_weights)
        smaller = {"patch_size": (2, 8, 8), "num_layers": 2, "num_heads": 2, "head_dim": 16, "ffn_dim": 64,
                   "freq_dim": 32}
        backbone = BackboneConfig.model_validate({**tiny.backbone.model_dump(), **smaller})
        return tiny.model_copy(update={"name": "micro", "backbone": backbone})
    if name == "tiny":
        return ExpertPreset(
            name="tiny",
            backbone=BackboneConfig(frames=8, height=32, width=32, patch_size=(2, 4, 4), num_layers=3,
                                    num_heads=3, head_dim=32, ffn_dim=256, freq_dim=64, prediction="x"),
            text=text(width=64, layers=1, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.99, target_steps=400,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name == "small":
        return ExpertPreset(
            name="small",
            backbone=BackboneConfig(frames=16, height=32, width=32, patch_size=(2, 4, 4), num_layers=4,
                                    num_heads=4, head_dim=32, ffn_dim=512, freq_dim=64, prediction="x"),
            text=text(width=96, layers=2, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=50, ema_decay=0.995, target_steps=1000,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name == "tiny-latent":  # a VAE with 4 latent channels, 2× down in time and 2× in space (tests make one)
        return ExpertPreset(
            name="tiny-latent",
            backbone=BackboneConfig(space="latent", vae=vae, in_channels=4, frames=9, height=32, width=32,
                                    patch_size=(1, 2, 2), num_layers=2, num_heads=2, head_dim=16, ffn_dim=128,
                                    freq_dim=32, prediction="x"),
            text=text(width=64, layers=1, heads=2, context_length=32),
            train=TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, ema_decay=0.99, target_steps=400,
                              checkpoint_every=100, logit_normal_mean=1.0),
        )
    if name in LATENT_PRESETS:
        big = name == "large"
        text_cfg = open_clip_text(text_model or "ViT-B-32", text_weights, 77)
        return ExpertPreset(
            name=name,
            backbone=BackboneConfig(space="latent", vae=vae, in_channels=16,
                                    frames=49 if big else 33, height=256, width=256, patch_size=(1, 2, 2),
                                    num_layers=24 if big else 12, num_heads=16 if big else 12, head_dim=64,
                                    ffn_dim=4096 if big else 3072, freq_dim=256),
            text=text_cfg,
            train=TrainConfig(batch_size=16 if big else 32, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
                              target_steps=200_000 if big else 100_000, checkpoint_every=2000, logit_normal_mean=1.0),
        )
    raise ParisError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")

# Steps per expert of the built-in demo (`paris-node demo`, and the run `join` starts with no peers): the budget
# at which benchmarks/demo_quality.py measures that the demo's videos show their prompt's colour and background.
DEMO_STEPS = 3000

def effective_config(spec: RunSpec) -> RunConfig:
    """The run's settings written as a run config: every field the spec's preset fixes (what `run show`
    prints; given to `run init --config` with the same data and model files, it makes the same model)."""
    b, t, made = spec.preset.backbone, spec.preset.train, spec.config
    models = made.models if made is not None else None
    return RunConfig(
        preset=spec.preset.name, name=spec.name, clusters=spec.num_clusters, seed=spec.seed,
        video=VideoConfig(frames=b.frames, height=b.height, width=b.width,
                          fps=made.video.fps if made is not None else None),
        model=ModelConfig(**{k: getattr(b, field) for k, field in _BACKBONE_FIELDS.items()}),
        train=TrainingConfig(**t.model_dump(include=set(TrainingConfig.model_fields))),
        models=models.model_copy(update={"text_model": spec.preset.text.model_name}) if models is not None
        else {"text_model": spec.preset.text.model_name},
    )
