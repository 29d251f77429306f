"""Any diffusers VAE as the codec of a latent run, read from its own folder.

The class is the folder's `config.json` `_class_name` (a diffusers autoencoder: Wan 2.1/2.2, LTX-Video,
HunyuanVideo, CogVideoX, Cosmos, or an image `AutoencoderKL`, applied frame by frame as Paris 1.0 did).
What the VAE does to a clip — latent channels, temporal and spatial compression (Wan 2.2's patch included) —
is measured, not looked up: the class is built from its config under torch's FakeTensorMode (no weight is
read or allocated) and a clip of the run's frames and size is encoded and decoded there. So a folder that
does not fit the run is a one-line error before any weight is loaded, and a new diffusers VAE needs no
table of ours. Latent statistics and scaling are the VAE's own (config fields, or buffers it stores).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from expert.assets import asset_path
from expert.backbone import PixelCodec
from protocol.errors import ParisError
from protocol.model import BackboneConfig

log = logging.getLogger(__name__)
# where a VAE states its compression (config fields or attributes); diffusers' own pipelines size latents by them
_DECLARED = {"temporal": ("temporal_compression_ratio", "scale_factor_temporal"),
             "spatial": ("spatial_compression_ratio", "scale_factor_spatial")}


class VaeShape(BaseModel):
    """What a VAE folder does to a clip of `frames`×`height`×`width` (measured on fake tensors)."""

    model_config = ConfigDict(frozen=True)

    class_name: str
    per_frame: bool  # an image VAE: frames are encoded one by one
    latent: tuple[int, int, int, int]  # C, T', H', W'
    temporal: int
    spatial: int


def read_config(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ParisError(f"{folder}: no such file or folder" if not folder.exists() else
                         f"{folder} is a file: a diffusers VAE is a folder (config.json and its weights)")
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ParisError(f"cannot read the VAE config {path}: {e}") from None
    if not isinstance(config, dict):
        raise ParisError(f"{path} is not a diffusers config")
    return config


def vae_class(config: dict, folder: Path) -> type:
    """The diffusers autoencoder class the config names; anything else is a one-line error."""
    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    name = config.get("_class_name")
    try:
        cls = getattr(diffusers, name) if isinstance(name, str) and name.isidentifier() else None
    except (AttributeError, ImportError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)
            and cls.__module__.startswith("diffusers.models.autoencoders.")
            and callable(getattr(cls, "encode", None)) and callable(getattr(cls, "decode", None))):
        raise ParisError(f"{folder} holds a {name!r}, not a diffusers VAE this diffusers knows "
                         "(e.g. AutoencoderKLWan, AutoencoderKLLTXVideo, AutoencoderKLHunyuanVideo, "
                         "AutoencoderKLCogVideoX, AutoencoderKLCosmos, AutoencoderKL)")
    return cls


def probe_vae(folder: Path, frames: int, height: int, width: int) -> VaeShape:
    """Encode and decode one fake clip through the VAE the folder's config describes (no weights read)."""
    config = read_config(folder)
    return _probe(json.dumps(config, sort_keys=True), str(folder), frames, height, width)


@functools.lru_cache(maxsize=32)
def _probe(config_json: str, folder: str, frames: int, height: int, width: int) -> VaeShape:
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = json.loads(config_json)
    cls = vae_class(config, Path(folder))
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        try:
            model = cls.from_config(config)
        except Exception as e:  # any failure to build from the config is the folder's fault
            raise ParisError(f"{folder}: the {cls.__name__} config does not build: {_first_line(e)}") from None
        # a video VAE convolves in time and takes the clip; an image VAE takes its frames one by one
        per_frame = not any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        x = torch.empty(frames, 3, height, width) if per_frame else torch.empty(1, 3, frames, height, width)
        try:
            z = model.encode(x).latent_dist.mode()
            y = decode(model, z)
        except Exception as e:  # a VAE rejects a shape in its own way
            raise ParisError(f"{folder}: the {cls.__name__} cannot encode {frames}×{height}×{width} clips: "
                             f"{_first_line(e)}") from None
    if per_frame:
        c, h, w = z.shape[1:]
        latent, decoded = (int(c), frames, int(h), int(w)), (int(y.shape[1]), frames, *map(int, y.shape[2:]))
    else:
        latent, decoded = tuple(int(v) for v in z.shape[1:]), tuple(int(v) for v in y.shape[1:])
    _, t, h, w = latent
    if decoded != (3, frames, height, width):
        raise ParisError(f"{folder}: the {cls.__name__} turns {frames}×{height}×{width} clips into latents "
                         f"{latent} that decode to {decoded[1]}×{decoded[2]}×{decoded[3]}: the run's frames or size "
                         "do not fit its compression")
    temporal = 1 if per_frame else ((frames - 1) // (t - 1) if t > 1 else frames)
    measured = {"spatial": height // h, **({"temporal": temporal} if not per_frame and t > 1 else {})}
    for what, said in _declared_compression(model).items():
        if what in measured and said != measured[what]:
            log.warning("%s: the %s states %s compression %d but compresses %d×: ours measures it, but diffusers' "
                        "own pipelines read the stated value and would size latents wrongly", folder, cls.__name__,
                        what, said, measured[what])
    return VaeShape(class_name=cls.__name__, per_frame=per_frame, latent=latent, temporal=temporal,
                    spatial=height // h)


def _declared_compression(model: torch.nn.Module) -> dict[str, int]:
    """The compression a VAE states: an attribute it sets (LTX-Video computes one) or its config's field."""
    out = {}
    for what, names in _DECLARED.items():
        for name in names:
            value = vars(model).get(name, model.config.get(name))  # type: ignore[union-attr]
            if isinstance(value, int) and not isinstance(value, bool):
                out[what] = value
                break
    return out


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The VAE's decoder output. A decoder conditioned on a timestep (its config's `timestep_conditioning`,
    LTX-Video 0.9.1 on) is given t = 0, the clean latents, as its own pipeline does by default."""
    if getattr(vae.config, "timestep_conditioning", False):
        return vae.decode(z, temb=torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)).sample
    return vae.decode(z).sample


def check_vae(folder: Path, cfg: BackboneConfig) -> VaeShape:
    """The folder's VAE measured against a latent backbone: its channels and the run's clip shape must fit."""
    shape = probe_vae(folder, cfg.frames, cfg.height, cfg.width)
    if shape.latent[0] != cfg.in_channels:
        raise ParisError(f"{folder}: the {shape.class_name} has {shape.latent[0]} latent channels, the run's "
                         f"model expects {cfg.in_channels}")
    return shape


def load_vae(folder: Path, cls: type) -> torch.nn.Module:
    """The VAE's weights, loaded strictly: a missing or unexpected tensor is an error, never a random init."""
    try:
        vae, info = cls.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ParisError(f"cannot load the video VAE from {folder}: {_first_line(e)}") from None
    bad = [k for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(key, [])]
    if bad:
        raise ParisError(f"cannot load the video VAE from {folder}: its weights do not fit its config "
                         f"({len(bad)} tensors, e.g. {bad[0]})")
    return vae.requires_grad_(False).eval()


def _stat(vae: torch.nn.Module, name: str, channels: int, default: float) -> torch.Tensor:
    """A per-channel latent statistic: the config's field, else a buffer the model stores (LTX), else default."""
    value = getattr(vae.config, name, None)
    if value is None:
        value = dict(vae.named_buffers()).get(name)
    if value is None:
        return torch.full((channels,), default)
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
    if t.numel() != channels:
        raise ParisError(f"the VAE's {name} has {t.numel()} values for {channels} latent channels")
    return t


class VaeCodec(PixelCodec):
    """Latent space through a frozen diffusers VAE, the preset's `vae` asset as this machine holds it
    (expert.assets). Latents are normalised the way the VAE's own pipelines do: (z − mean) / std with its
    latent statistics, then (· − shift_factor) × scaling_factor where its config has them."""

    caches_latents = True  # a VAE forward per clip: trainers encode every clip once and train on the latents

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__(cfg)
        assert cfg.vae is not None  # a latent backbone names its VAE (BackboneConfig's check)
        self.vae_dir = asset_path(cfg.vae, "video VAE")
        self.shape = check_vae(self.vae_dir, cfg)  # before any weight is read
        self.vae = load_vae(self.vae_dir, vae_class(read_config(self.vae_dir), self.vae_dir))
        c = cfg.in_channels
        view = (1, c, 1, 1, 1)
        self.register_buffer("mean", _stat(self.vae, "latents_mean", c, 0.0).view(view), persistent=False)
        self.register_buffer("std", _stat(self.vae, "latents_std", c, 1.0).view(view), persistent=False)
        self.scale = float(getattr(self.vae.config, "scaling_factor", None) or 1.0)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def t_down(self) -> int:
        return self.shape.temporal

    @property
    def s_down(self) -> int:
        return self.shape.spatial

    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.shape.latent

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.to_model_frames(frames).to(self.vae.dtype)
        if self.shape.per_frame:
            b, t = x.shape[0], x.shape[2]
            z = self.vae.encode(x.transpose(1, 2).flatten(0, 1)).latent_dist.mode()
            z = z.unflatten(0, (b, t)).transpose(1, 2)
        else:
            z = self.vae.encode(x).latent_dist.mode()
        return ((z.float() - self.mean) / self.std - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = ((z.float() / self.scale + self.shift) * self.std + self.mean).to(self.vae.dtype)
        if self.shape.per_frame:
            b, t = z.shape[0], z.shape[2]
            x = decode(self.vae, z.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, t)).transpose(1, 2)
        else:
            x = decode(self.vae, z)
        return super().decode(x)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
