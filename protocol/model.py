"""Configs that define an expert: backbone shape, text encoder, and training hyper-parameters.

They are data (recorded in the run spec and in every checkpoint), so that a checkpoint can be checked
against the run it claims to belong to, and any peer rebuilds exactly the same network.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from protocol.data import Frozen
from protocol.swarm_records import Cid


class Asset(Frozen):
    """A model file or folder (a VAE, text-encoder weights) in the content store: named by the CID of its
    chunk manifest, so that the run id commits to its bytes and every peer fetches and verifies the same ones.
    `bytes` bounds the download (the run id commits to it too); `name` is the file or folder name it had."""

    cid: Cid
    bytes: int = Field(ge=1)
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,128}$")


class TextEncoderConfig(Frozen):
    """The frozen text encoder. `family` None (open_clip): `model_name` names an open_clip architecture (pretrained
    weights from the `weights` asset when given, else random init from `seed`); with no `model_name` a small
    custom tower is built from `width/layers/heads` with random init from `seed`; the BPE tokenizer is the real
    one either way. `family="transformers"`: `weights` is a `save_pretrained` folder (model and tokenizer) of
    the `transformers` class `model_name` (T5/UMT5 encoder, CLIP text model), `width` its hidden size; its
    states are computed once at `run init` and stored in the data set (`stored`, as a pretrained open_clip
    tower's are), so that trainers, verifiers and routers never load it.

    `layer_scale`: the random tower's LayerScale init (open_clip's `ls_init_value`; None: none, the default).
    Without it the random blocks' outputs are ~30× the token embeddings and blur which word sits where (a
    colour word's state is closer to another colour in the same place than to itself elsewhere); at 0.01
    each token stays recognisable. Measured on the tiny preset it is not yet a win: alone it made a
    colour-only probe worse at 300 steps (0.20 vs 0.45, chance 0.17) and slowed learning six full-frame
    colours (4/12 vs 10/12 samples right at 100 steps, 11–12/12 for both at 300); with the padding mask and
    the pooled caption it was the best at 600 steps (0.62). So it stays an option. Pretrained towers
    ignore it."""

    family: Literal["transformers"] | None = None  # None: open_clip (left out of ids, so old run ids hold)
    model_name: str | None = None
    weights: Asset | None = None
    width: int = Field(default=64, ge=8)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=2, ge=1)
    context_length: int = Field(default=32, ge=4, le=512)
    seed: int = 0
    layer_scale: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _family_fits(self) -> TextEncoderConfig:
        if self.family is None and self.context_length > 77:
            raise ValueError("an open_clip text tower reads at most 77 tokens")
        if self.family == "transformers" and (self.weights is None or not self.model_name):
            raise ValueError("a transformers text encoder needs its folder (weights) and class (model_name)")
        return self

    @property
    def init(self) -> str:
        return "pretrained" if self.weights else f"random(seed={self.seed})"

    @property
    def stored(self) -> bool:
        """Whether the run's data carries every caption's states (computed once at `run init`): a `transformers`
        encoder's and a pretrained open_clip tower's (ViT-L-14 is 123 M parameters no volunteer should load to
        train). A random tower (no `weights`) is small and rebuilt the same from its seed: each trainer
        computes its own states."""
        return self.family == "transformers" or self.weights is not None


class BackboneConfig(Frozen):
    """A diffusers `WanTransformer3DModel` shape. `space="latent"` denoises the latents of a video VAE, the
    `vae` asset (a diffusers VAE folder, any class its config.json names: expert.vae; by CID, never a path,
    so that a joiner on another machine builds the same model); `in_channels` are its latent channels.
    `space="pixel"` trains on frames scaled to [-1, 1]."""

    arch: Literal["wan"] = "wan"
    space: Literal["pixel", "latent"] = "pixel"
    vae: Asset | None = None
    frames: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    in_channels: int = Field(default=3, ge=1)
    patch_size: tuple[int, int, int] = (1, 4, 4)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    head_dim: int = Field(ge=8)
    ffn_dim: int = Field(ge=8)
    freq_dim: int = Field(default=64, ge=8)
    # "paris": cross-attention ignores padding tokens and the pooled caption joins the time embedding
    # (expert.backbone.condition_on_text); "wan": diffusers' Wan as it is (every token attended, no pooling)
    text_conditioning: Literal["paris", "wan"] = "paris"
    # What the network outputs. None or "v": the velocity ε − x_0 (Wan, SD3). "x": the clean sample x_0, turned
    # into the velocity (x_t − x_0) / max(t, 0.05) inside the model (expert.backbone.predict_clean_sample), so
    # training, sampling, mixing and validation still see velocities. The pixel presets use "x": a (2, 4, 4)
    # patch of RGB holds 96 values, about as many as the network is wide, and a velocity (mostly noise)
    # cannot be carried through it — v-prediction left per-pixel speckle in every sample (issue "prompts must
    # steer the video"). None keeps the ids of runs made before the field existed.
    prediction: Literal["v", "x"] | None = None
    # The weights every expert starts from: a diffusers WanTransformer3DModel folder, by CID (expert.init_weights);
    # None: random init from the run's seed
    init_from: Asset | None = None

    @model_validator(mode="after")
    def _check(self) -> BackboneConfig:
        if self.space == "latent" and self.vae is None:
            raise ValueError("a latent-space backbone needs its vae asset (a diffusers VAE folder, by CID)")
        return self


class TrainConfig(Frozen):
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=50, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    cond_dropout: float = Field(default=0.1, ge=0, le=1)
    # Training t ~ sigmoid(N(mean, std)). The presets use mean 1.0 (median t 0.73): the caption is the only
    # source of what x_t does not yet show, and on 32×32 clips an object's colour can be read off x_t up to
    # t ≈ 0.9, so with mean 0 (SD3's default) 0.5 % of training samples (t > 0.93) taught the network to use
    # its caption; mean 1 gives 5.6 %. Measured on the demo expert at 1000 steps: colour accuracy 0.27 → 0.54.
    logit_normal_mean: float = 0.0
    logit_normal_std: float = Field(default=1.0, gt=0)
    # The share of each batch whose t is drawn uniformly from (0, 1) instead (None: none). Routers use 1: the
    # sampler asks them at evenly spaced t from 1 down to 0, and the decision that matters most, which expert
    # (and so which background) a video starts with, is made near t = 1, which logit-normal t almost never
    # visits (mean 1: 2.6 % of samples above 0.95).
    t_uniform: float | None = Field(default=None, ge=0, le=1)
    target_steps: int = Field(ge=1)
    checkpoint_every: int = Field(default=200, ge=1)


RouterMode = Literal["xt", "joint", "combined", "caption"]
ROUTER_MODES: tuple[str, ...] = ("xt", "joint", "combined", "caption")


class RouterHead(Frozen):
    """Turns the backbone into a router r(x_t, t [, text]) → K logits: the transformer's per-patch outputs
    have K channels and are mean-pooled. `use_text=False` is Paris' router, `True` is DDM's.

    `caption_prior`: a small classifier p(k | c) on the frozen text states sits beside the trunk, trained
    with it (expert.router.CaptionPrior). `cluster_prior`: p(k), each cluster's share of the run's data,
    which the `combined` mode divides by. `mode`: how an ensemble routes unless told otherwise
    (expert.router.Router.posterior): `xt` p(k | x_t), `joint` p(k | x_t, c) from the caption-reading trunk,
    `caption` p(k | c), `combined` p(k | x_t) · p(k | c) / p(k)."""

    num_experts: int = Field(ge=1, le=1024)
    use_text: bool = False
    # a partial ensemble keeps only these outputs (the clusters whose experts it holds), in this order
    keep: tuple[int, ...] | None = None
    caption_prior: bool | None = None
    cluster_prior: tuple[float, ...] | None = None
    mode: RouterMode | None = None

    @model_validator(mode="after")
    def _check_keep(self) -> RouterHead:
        if self.keep is not None and (not self.keep or len(set(self.keep)) != len(self.keep)
                                      or any(not 0 <= k < self.num_experts for k in self.keep)):
            raise ValueError("keep must list distinct router outputs 0..num_experts-1")
        if self.cluster_prior is not None and (
                len(self.cluster_prior) != self.num_experts or any(not 0 < p <= 1 for p in self.cluster_prior)
                or abs(sum(self.cluster_prior) - 1) > 1e-3):
            raise ValueError("cluster_prior must give every cluster a share in (0, 1], summing to 1")
        if self.mode is not None and self.mode not in self.modes:
            raise ValueError(f"router mode {self.mode!r} needs what this router lacks (it offers "
                             f"{', '.join(self.modes)})")
        return self

    @property
    def routed(self) -> int:
        """How many experts the router's (kept) outputs route between."""
        return len(self.keep) if self.keep is not None else self.num_experts

    @property
    def modes(self) -> tuple[str, ...]:
        """The routing modes this router can serve."""
        out = ["xt"] + (["joint"] if self.use_text else [])
        if self.caption_prior:
            out += ["caption"] + (["combined"] if self.cluster_prior is not None else [])
        return tuple(m for m in ROUTER_MODES if m in out)

    @property
    def default_mode(self) -> str:
        """`mode` when set; else the best this router offers: joint, combined, then xt. Joint comes first
        because it measured best: ahead of combined in routing accuracy near t = 1 (0.89 vs 0.83 with 3
        clusters, 0.85 vs 0.71 with 6) and in the clustered attribute's accuracy (docs/RESULTS*.md)."""
        if self.mode is not None:
            return self.mode
        return next(m for m in ("joint", "combined", "xt") if m in self.modes)


class ExpertPreset(Frozen):
    """Everything needed to build and train one network of a run: a named bundle of the configs above.
    With `router` set it describes the run's router instead of an expert."""

    name: str
    backbone: BackboneConfig
    text: TextEncoderConfig
    train: TrainConfig
    router: RouterHead | None = None
