"""The run config file (`run init --config run.toml`): what a researcher chooses for a run, in one place.

A preset is a named set of defaults for this config; a config names one (`preset = "tiny"`) and overrides any
field. Every field is optional (None: the preset's value) and documented in its `description`; unknown keys are
refused, so a typo is an error, not a silent default. The run spec records the config it was made from (its
local paths left out: the model assets it names are recorded by CID), so the run id commits to it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from protocol.data import Frozen
from protocol.errors import ParisError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class VideoConfig(Frozen):
    """The clips the model sees. A clip spans frames / fps seconds of its source."""

    frames: int | None = Field(default=None, ge=1, description="Frames per training clip (pixel frames, before "
                               "any VAE). Divisible by the patch's time size on pixel presets.")
    height: int | None = Field(default=None, ge=8, description="Frame height in pixels (non-square allowed).")
    width: int | None = Field(default=None, ge=8, description="Frame width in pixels (non-square allowed).")
    fps: float | None = Field(default=None, gt=0, description="Frames per second of a training clip. Checked "
                              "against the data: its clips must span the same time (frames/fps seconds), so "
                              "prepare them with `data prepare --frames F --fps R` to match. Unset: the "
                              "clips' own span, whatever their rate.")


class ModelConfig(Frozen):
    """The expert's shape: a diffusers WanTransformer3DModel. Width = heads × head_dim."""

    layers: int | None = Field(default=None, ge=1, description="Transformer blocks.")
    heads: int | None = Field(default=None, ge=1, description="Attention heads per block.")
    head_dim: int | None = Field(default=None, ge=8, description="Channels per head (even; Wan splits them "
                                 "between time, height and width rotary embeddings).")
    ffn_dim: int | None = Field(default=None, ge=8, description="Hidden width of each block's feed-forward "
                                "network.")
    freq_dim: int | None = Field(default=None, ge=8, description="Width of the sinusoidal time embedding.")
    patch: tuple[int, int, int] | None = Field(default=None, description="Patch size (time, height, width) in "
                                               "the denoised space (pixels, or VAE latents).")
    prediction: Literal["v", "x"] | None = Field(default=None, description="What the network outputs: 'v' the "
                                                 "velocity, 'x' the clean sample (turned into a velocity inside "
                                                 "the model; the pixel presets use it).")

    @model_validator(mode="after")
    def _check_patch(self) -> ModelConfig:
        if self.patch is not None and any(p < 1 for p in self.patch):
            raise ValueError("patch sizes must be at least 1")
        if self.head_dim is not None and self.head_dim % 2:
            raise ValueError("head_dim must be even (rotary embeddings rotate pairs of channels)")
        return self


class TrainingConfig(Frozen):
    """Training hyper-parameters of every expert (the router derives its own from them)."""

    lr: float | None = Field(default=None, gt=0, description="Peak AdamW learning rate (after warm-up).")
    batch_size: int | None = Field(default=None, ge=1, description="Clips per micro-batch.")
    grad_accum: int | None = Field(default=None, ge=1, description="Micro-batches per optimizer step (the "
                                   "effective batch is batch_size × grad_accum).")
    warmup_steps: int | None = Field(default=None, ge=0, description="Steps of linear learning-rate warm-up.")
    ema_decay: float | None = Field(default=None, ge=0, lt=1, description="Decay of the EMA weights that are "
                                    "published, validated and sampled.")
    target_steps: int | None = Field(default=None, ge=1, description="Optimizer steps per expert: an expert "
                                     "is done when it reaches them.")
    checkpoint_every: int | None = Field(default=None, ge=1, description="Steps between published checkpoints "
                                         "(each one is validated and can be replayed by verifiers).")
    weight_decay: float | None = Field(default=None, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(default=None, gt=0, description="Gradient norm clip.")
    cond_dropout: float | None = Field(default=None, ge=0, le=1, description="Share of captions dropped in "
                                       "training (what classifier-free guidance needs).")
    logit_normal_mean: float | None = Field(default=None, description="Training noise levels t ~ "
                                            "sigmoid(N(mean, 1)): higher means noisier.")


class ModelsConfig(Frozen):
    """Pretrained parts, by local path (relative to the config file). `run init` puts each into the home's
    content store and the run names it by CID, as the --vae / --text-* / --clip-* flags do."""

    vae: str | None = Field(default=None, description="A diffusers VAE folder (latent presets).")
    text_model: str | None = Field(default=None, description="open_clip architecture of the text tower (e.g. "
                                   "ViT-L-14).")
    text_weights: str | None = Field(default=None, description="open_clip weights file for the text tower.")
    dinov2: str | None = Field(default=None, description="A DINOv2 folder (transformers Dinov2Model: config.json, "
                               "weights, preprocessor_config.json) that embeds clips for clustering, as Paris did.")
    clip_model: str | None = Field(default=None, description="open_clip architecture that embeds clips for "
                                   "clustering (instead of DINOv2).")
    clip_weights: str | None = Field(default=None, description="open_clip weights that embed clips for "
                                     "clustering (instead of DINOv2).")


class RunConfig(Frozen):
    """Everything `run init` needs besides the data. Flags given on the command line win over the file."""

    preset: str | None = Field(default=None, description="The named defaults every unset field takes: tiny, "
                               "small, tiny-latent, base or large (default small).")
    name: str | None = Field(default=None, description="A human name for the run.")
    clusters: int | None = Field(default=None, ge=1, le=1024, description="Number of clusters K (= experts).")
    seed: int | None = Field(default=None, description="Seed for clustering, the held-out split and training.")
    video: VideoConfig = Field(default_factory=VideoConfig, description="The clips the model sees.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The expert's shape.")
    train: TrainingConfig = Field(default_factory=TrainingConfig, description="Training hyper-parameters.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Pretrained parts by local path.")

    def with_flags(self, *, preset: str | None = None, clusters: int | None = None, seed: int | None = None,
                   name: str | None = None, target_steps: int | None = None) -> RunConfig:
        """This config with the command line's flags applied (a flag given wins over the file; None: not given),
        and the defaults of the fields a run needs filled in (preset small, seed 0, name "run")."""
        top = {k: v for k, v in (("preset", preset), ("clusters", clusters), ("seed", seed), ("name", name))
               if v is not None}
        train = self.train.model_dump()
        if target_steps is not None:
            train["target_steps"] = target_steps
        merged = RunConfig.model_validate({**self.model_dump(), **top, "train": train})
        return merged.model_copy(update={"preset": merged.preset or "small", "seed": merged.seed or 0,
                                         "name": merged.name or "run"})

    def recorded(self) -> RunConfig:
        """The config as the run spec records it: local paths left out (the spec names those assets by CID)."""
        return self.model_copy(update={"models": self.models.model_copy(
            update={"vae": None, "text_weights": None, "dinov2": None, "clip_weights": None})})

    def path(self, field: str, base: Path) -> Path | None:
        """A path field of `models`, relative to `base` (the config file's folder) unless absolute."""
        value = getattr(self.models, field)
        return None if value is None else (base / Path(value).expanduser())


def load_run_config(path: Path) -> RunConfig:
    """Read and validate a run config file; a bad file is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ParisError(f"run config {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ParisError(f"run config {path}: not valid TOML ({e})") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        msg = "unknown key (see docs/cli.md#the-run-config)" if err["type"] == "extra_forbidden" else err["msg"]
        raise ParisError(f"run config {path}: {where}: {msg}") from None
