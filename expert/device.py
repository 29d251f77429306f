"""`--gpu N|cpu` → a torch device. Its own module so that a command can refuse a missing GPU after importing
torch alone (a few seconds), before it imports the model stack (diffusers: several more)."""

from __future__ import annotations

import torch

from protocol.errors import ParisError


def resolve_device(gpu: str | int | None) -> torch.device:
    """`--gpu N|cpu` → a torch device, with a clear error when CUDA is asked for but absent."""
    if gpu is None or str(gpu).lower() == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParisError(f"--gpu {gpu} was asked for but no CUDA device is available (use --gpu cpu)")
    index = int(gpu)
    if index >= torch.cuda.device_count():
        raise ParisError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)
