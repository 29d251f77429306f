"""Experts that start from an open video model: `run init --init-from DIR` names a diffusers
`WanTransformer3DModel` folder (e.g. Wan 2.1's 1.3 B text-to-video transformer) by CID; every expert starts
from its weights and specialises on its cluster.

The expert's shape comes from the folder's `config.json` (never from a preset table), checked against what the
run feeds it — the VAE's latent channels (or RGB) and the text encoder's width — before any weight is read.
The experts then are plain Wan transformers (velocity prediction, Wan's own text conditioning), as the model
was trained. Trainers and verifiers alike load the folder when they build the step-0 state, so a verifier's
rebuilt initialisation is the trainer's, bit for bit; sampling never needs it (checkpoints hold the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from expert.assets import asset_path
from protocol.errors import ParisError
from protocol.model import Asset, BackboneConfig

WAN_CLASS = "WanTransformer3DModel"
# what expert.backbone.build_backbone builds beside the shape: a folder that differs is another architecture
_FIXED = {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
          "image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None}


def init_backbone(folder: Path, asset: Asset, base: BackboneConfig, text_width: int) -> BackboneConfig:
    """`base` (the preset's space, clip size and VAE) with the shape of the transformer in `folder` and its
    weights as the initialisation (`init_from`); from `config.json` alone, no weight is read."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ParisError(f"{folder} is not a diffusers model folder (config.json: {e})") from None
    if config.get("_class_name") != WAN_CLASS:
        raise ParisError(f"{folder} holds a {config.get('_class_name') or 'model of unknown class'}, not a "
                         f"{WAN_CLASS} (experts are Wan video transformers)")
    if not _weight_files(folder):
        raise ParisError(f"{folder} has no safetensors weights (diffusion_pytorch_model*.safetensors)")
    for key, want in _FIXED.items():
        if config.get(key, want) != want:
            raise ParisError(f"{folder}: {key}={config.get(key)!r}, experts are built with {want!r}")
    channels, out = config.get("in_channels"), config.get("out_channels") or config.get("in_channels")
    if channels != base.in_channels or out != channels:
        raise ParisError(f"{folder} denoises {channels} channels (out {out}); this run's "
                         f"{'VAE latents have' if base.space == 'latent' else 'frames have'} {base.in_channels}")
    if config.get("text_dim") != text_width:
        raise ParisError(f"{folder} reads text states of width {config.get('text_dim')}; this run's text encoder "
                         f"gives {text_width}")
    try:
        return base.model_copy(update={
            "patch_size": tuple(int(v) for v in config["patch_size"]), "num_layers": int(config["num_layers"]),
            "num_heads": int(config["num_attention_heads"]), "head_dim": int(config["attention_head_dim"]),
            "ffn_dim": int(config["ffn_dim"]), "freq_dim": int(config["freq_dim"]),
            "text_conditioning": "wan", "prediction": None, "init_from": asset})
    except (KeyError, TypeError, ValueError) as e:
        raise ParisError(f"{folder}/config.json lacks the transformer's shape ({e})") from None


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("diffusion_pytorch_model*.safetensors"))


@torch.no_grad()
def load_initial_weights(model: torch.nn.Module, asset: Asset) -> None:
    """Load the folder's weights into a freshly built expert (in place); weights that do not fit are refused."""
    folder = asset_path(asset, "initial weights")
    state: dict[str, torch.Tensor] = {}
    try:
        for f in _weight_files(folder):
            state.update(load_file(f))
    except (OSError, SafetensorError) as e:
        raise ParisError(f"cannot read the initial weights in {folder}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ParisError(f"the initial weights in {folder} do not fit their config: {str(e).splitlines()[0]}") \
            from None
