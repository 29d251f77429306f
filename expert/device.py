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


def resolve_devices(gpu: str) -> list[torch.device]:
    """`--gpu 0,1|all|cpu,cpu` (several devices: DDP) → torch devices; `all` is every CUDA device. A device
    named twice is allowed for CPUs only (tests and CPU boxes run several ranks on one CPU)."""
    text = str(gpu).strip().lower()
    if text == "all":
        if not torch.cuda.is_available():
            raise ParisError("--gpu all: no CUDA device is available (use --gpu cpu,cpu for CPU processes)")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    devices = [resolve_device(part.strip()) for part in text.split(",") if part.strip()]
    cuda = [d for d in devices if d.type == "cuda"]
    if len(set(cuda)) != len(cuda):
        raise ParisError(f"--gpu {gpu}: a GPU is named twice")
    if cuda and len(cuda) != len(devices):
        raise ParisError(f"--gpu {gpu}: mix of CPU and GPU devices (DDP needs one kind)")
    return devices
