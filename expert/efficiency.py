"""How a trainer uses its accelerator: TF32 matmuls, fused AdamW, optional `torch.compile`, and gradient
checkpointing when a batch does not fit. These are a node's runtime choices, not part of a run: two nodes
with different choices train the same run (verifiers compare losses within the run's tolerance, and bf16 or
TF32 on a GPU never matches a CPU bit for bit anyway). Attention is PyTorch's scaled-dot-product kernel
(flash / memory-efficient on CUDA) through diffusers' attention dispatcher; nothing to choose here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from protocol.model import TrainConfig

Checkpointing = Literal["auto", "on", "off"]


class Efficiency(BaseModel):
    """`compile`: compile the model's forward with torch.compile (minutes of warm-up, then faster steps on
    a GPU). `grad_checkpointing`: recompute activations in the backward pass to save memory; `auto` turns
    it on after a step runs out of device memory, and retries that step with the same batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    compile: bool = False
    grad_checkpointing: Checkpointing = "auto"


_prepared: set[str] = set()


def prepare_device(device: torch.device) -> None:
    """TF32 for matmuls and convolutions on CUDA (Ampere and later: ~8x the fp32 rate, 10-bit mantissa,
    what bf16 autocast leaves in fp32 anyway). Validation runs under expert.validation's exact-fp32 guard.
    The flags are process-wide: set once, so that a trainer built in one thread never turns TF32 back on
    under a validation running in another."""
    if device.type == "cuda" and "cuda" not in _prepared:
        _prepared.add("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def adamw(params: Iterable[torch.nn.Parameter], tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the run's hyper-parameters; the fused CUDA kernel on a GPU (one launch for every tensor)."""
    return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
                             fused=device.type == "cuda")


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA, or any backend's 'out of memory' RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def retry_with_checkpointing(choice: Checkpointing, already_on: bool, error: BaseException) -> bool:
    """Whether a step that failed with `error` is retried with gradient checkpointing turned on: only for an
    out-of-memory error, only under `auto`, and only once (if it is on already, the batch is too big)."""
    return choice == "auto" and not already_on and is_out_of_memory(error)


def enable_checkpointing(model: torch.nn.Module) -> bool:
    """Turn gradient checkpointing on for the diffusers transformer in `model` (an expert, or a router's
    trunk). False if there is none that supports it."""
    for m in (model, getattr(model, "trunk", None)):
        if m is not None and getattr(m, "_supports_gradient_checkpointing", False):
            m.enable_gradient_checkpointing()
            return True
    return False


def checkpointing_on(model: torch.nn.Module) -> bool:
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in (model, getattr(model, "trunk", None))
               if m is not None)
