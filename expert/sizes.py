"""How large a checkpoint of a preset can be, computed without allocating it (the model is built on the meta
device): the bound against which a download announced by a peer is checked before any byte is written."""

from __future__ import annotations

import functools

import torch

from protocol.model import ExpertPreset

_SLACK = 1.02  # safetensors headers and alignment, checkpoint.json
_FIXED = 4 << 20  # the RNG state, small buffers, metadata


@functools.lru_cache(maxsize=64)
def checkpoint_bytes_bound(preset: ExpertPreset) -> int:
    """Upper bound on a checkpoint folder of `preset` (an expert, or a router when `preset.router` is set):
    fp32 weights, EMA weights and AdamW's two moments (4 copies of the parameters), plus buffers."""
    from expert.backbone import build_backbone

    with torch.device("meta"):
        if preset.router is not None:
            from expert.router import Router

            model = Router(preset.backbone, preset.router, preset.text.width)
        else:
            model = build_backbone(preset.backbone, preset.text.width)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return int((4 * params + 2 * buffers) * _SLACK) + _FIXED
