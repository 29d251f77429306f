"""One expert trained on several local devices with PyTorch DistributedDataParallel.

Still no exchange between experts: the averaging is inside one machine, over one cluster's batch. Every rank
builds the same trainer (same run, cluster, seed, resume point), draws the preset's whole batch from the same
RNG and trains its 1/R share (Trainer.shard); DDP averages the gradients, so every rank takes the step one
process would have taken on the whole batch (tests/test_ddp.py: 2 ranks × B against 1 × 2B). Rank 0 owns the
output: progress, checkpoints, Ctrl-C; before every step it broadcasts whether to go on, and the other ranks
follow (they ignore Ctrl-C themselves). gloo on CPUs (`--gpu cpu,cpu`), NCCL on CUDA devices.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from expert.train import ExpertTrainer
from protocol.errors import ParisError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attach(trainer: ExpertTrainer, rank: int, world: int) -> None:
    """Make `trainer` one rank of `world` (the process group must be up): its batch share, DDP-averaged
    gradients, the step's loss and finiteness agreed by all ranks, and rank 0 deciding each step."""
    if not isinstance(trainer, ExpertTrainer):
        raise ParisError("DDP trains experts only (the router is small: one device is enough)")
    trainer.shard_rows(trainer.preset.train.batch_size)  # a batch that does not split is a one-line error
    trainer.shard = (rank, world)
    ids = [trainer.device.index] if trainer.device.type == "cuda" else None
    trainer.forward_model = DistributedDataParallel(trainer.model, device_ids=ids)

    def all_reduce(loss: float, finite: bool) -> tuple[float, bool]:
        t = torch.tensor([loss if finite else 0.0, 0.0 if finite else 1.0], device=trainer.device)
        dist.all_reduce(t)
        return float(t[0]) / world, bool(t[1] == 0)

    trainer.all_reduce = all_reduce  # type: ignore[method-assign]
    step = trainer.train_step

    def lead_step() -> float | None:
        _go(trainer, True)
        return step()

    if rank == 0:
        trainer.train_step = lead_step  # type: ignore[method-assign]


def _go(trainer: ExpertTrainer, go: bool | None = None) -> bool:
    """Rank 0 says (`go`), the others hear, whether another step follows."""
    flag = torch.tensor([1 if go else 0], device=trainer.device)
    dist.broadcast(flag, 0)
    return bool(flag[0])


def follow(trainer: ExpertTrainer) -> int:
    """A rank other than 0: take steps for as long as rank 0 says so; returns how many."""
    done = 0
    while _go(trainer):
        trainer.train_step()
        done += 1
    return done


def finish(trainer: ExpertTrainer) -> None:
    """Rank 0, after its last step: the others stop."""
    _go(trainer, False)


def _rank_main(rank: int, world: int, port: int, devices: list[str], make: Callable[[torch.device], ExpertTrainer],
               lead: Callable[[ExpertTrainer], object], result) -> None:
    """One spawned rank: join the group, build the trainer on its device, lead or follow."""
    if rank:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 handles Ctrl-C and tells the others to stop
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    try:
        trainer = make(device)
        attach(trainer, rank, world)
        if rank == 0:
            try:
                result.put(lead(trainer))
            finally:
                finish(trainer)
        else:
            follow(trainer)
    finally:
        dist.destroy_process_group()


def run_ddp(devices: list[str], make: Callable[[torch.device], ExpertTrainer],
            lead: Callable[[ExpertTrainer], object]):
    """Train with one process per device: `make(device)` builds each rank's trainer (identically), `lead(trainer)`
    runs on rank 0 (it drives `trainer.train`/checkpoints; the others follow step by step) and its result is
    returned. Both must be picklable (module-level functions or functools.partial of them)."""
    if len(devices) < 2:
        raise ParisError("--ddp needs at least two devices (--gpu 0,1 or --gpu cpu,cpu)")
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    result = ctx.SimpleQueue()
    mp.start_processes(_rank_main, args=(len(devices), free_port(), devices, make, lead, result),
                       nprocs=len(devices), start_method="spawn")
    if result.empty():
        raise ParisError("DDP training ended without a result from rank 0")
    return result.get()
