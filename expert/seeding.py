"""Modules built from a seed. Some random initialisations are part of a run: an expert's step-0 weights and
the random text tower that every peer rebuilds from its seed (its weights are never sent). They draw from
torch's global RNG, which every thread of a process shares: a checker building a model while the trainer
beside it builds its own interleaved their draws, and the trainer then trained on a text tower no other
peer could rebuild, so honest checkpoints failed their validation-loss check. Seeded builds therefore take
one process-wide lock; nothing else in paris-node draws from the global RNG (every draw passes a generator)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_BUILDS = threading.RLock()  # re-entrant: a router's trunk is built inside the router's own seeded build


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: the global RNG starts from `seed`, and no other thread's seeded build runs. The caller's RNG
    state is restored after."""
    with _BUILDS, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
