"""One expert trained on several local devices with PyTorch DistributedDataParallel.

Still no exchange between experts: the averaging is inside one machine, over one cluster's batch. Every rank
builds the same trainer (same run, cluster, seed, resume point), draws the preset's whole batch from the same
RNG and trains its 1/R share (Trainer.shard); DDP averages the gradients, so every rank takes the step one
process would have taken on the whole batch (tests/test_ddp.py: 2 ranks × B against 1 × 2B).

Rank 0 is the calling process (`train-local --ddp`, or the daemon's training thread under `join --ddp`): it
keeps the progress, the checkpoints, the lease and Ctrl-C; before every step it broadcasts whether to go on.
The other ranks are spawned processes that build their trainer with `make(device)` and follow step by step;
they ignore Ctrl-C (rank 0 tells them to stop) and exit if rank 0's process dies. gloo on CPUs
(`--gpu cpu,cpu`), NCCL on CUDA devices.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from expert.assets import register_paths, registered
from expert.checkpoint import read_meta
from expert.efficiency import Efficiency
from expert.shards import ClipBatch
from expert.train_expert import ExpertTrainer
from protocol.errors import ParisError
from protocol.model import ExpertPreset

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=15)  # a collective waits this long (rank 0 writes its last checkpoint first)
JOIN_SECONDS = 60.0  # how long rank 0 waits for the others to exit once they were told to stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_world(batch_size: int, world: int) -> None:
    """A one-line error unless the preset's batch splits evenly over `world` devices."""
    if world < 2:
        raise ParisError("--ddp needs two or more devices (--gpu 0,1, all or cpu,cpu)")
    if batch_size % world:
        raise ParisError(f"--ddp: the preset's batch of {batch_size} does not split over {world} devices")


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


def detach(trainer: ExpertTrainer) -> None:
    """Undo `attach`: the trainer trains alone again (its state is kept)."""
    for name in ("train_step", "all_reduce"):
        trainer.__dict__.pop(name, None)
    trainer.forward_model = trainer.model
    trainer.shard = (0, 1)


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


def _init_group(rank: int, world: int, port: int, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=TIMEOUT)


def _watch_parent(parent: int) -> None:
    """A follower whose rank 0 died (kill -9, a crash) exits instead of waiting out the collective's timeout."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def _follower_main(rank: int, world: int, port: int, device: str, make: Callable[[torch.device], ExpertTrainer],
                   parent: int) -> None:
    """One spawned rank: join the group, build the trainer on its device, follow rank 0, leave cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 handles Ctrl-C and tells the others to stop
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="ddp-parent-watch").start()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dev = torch.device(device)
    _init_group(rank, world, port, dev)
    try:
        trainer = make(dev)
        attach(trainer, rank, world)
        follow(trainer)
        dist.barrier()  # every rank is past its last collective
        detach(trainer)  # the DDP reducer goes before its group
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    # Exit without the interpreter's finalisation: gloo's worker threads can still hold tensors while Python
    # shuts down, and a rank whose work is done then dies with SIGABRT ("terminate called without an active
    # exception", seen in CI; pytorch/pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class DdpGroup:
    """`with DdpGroup(trainer, devices, make):` makes this process rank 0 of len(devices) (its `trainer` is on
    devices[0]), spawns ranks 1… (each builds its trainer with `make(device)`, identically), and tears it all
    down on exit: the followers are told to stop and waited for, the group is destroyed, the trainer detached.
    A rank that fails makes the block end with a one-line ParisError (the state rank 0 holds is intact)."""

    def __init__(self, trainer: ExpertTrainer, devices: list[str], make: Callable[[torch.device], ExpertTrainer]):
        check_world(trainer.preset.train.batch_size, len(devices))
        self.trainer, self.devices, self.make = trainer, [str(d) for d in devices], make
        self.procs: list = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> DdpGroup:
        import torch.multiprocessing as mp

        world, port, ctx = len(self.devices), free_port(), mp.get_context("spawn")
        self.procs = [ctx.Process(target=_follower_main, name=f"ddp-rank-{r}", daemon=True,
                                  args=(r, world, port, self.devices[r], self.make, os.getpid()))
                      for r in range(1, world)]
        for p in self.procs:
            p.start()
        try:
            _init_group(0, world, port, self.trainer.device)
            attach(self.trainer, 0, world)
        except BaseException as e:
            self._teardown(clean=False)
            if isinstance(e, RuntimeError):
                raise ParisError(f"DDP over {world} devices did not start: {_first_line(e)}{self._exits()}") from e
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        clean = exc is None or not isinstance(exc, RuntimeError)  # a collective that failed cannot be finished
        try:
            self._teardown(clean=clean)
        except RuntimeError as e:  # a follower that died after our last step: said, the state is ours anyway
            if exc is None:
                raise ParisError(f"DDP: a rank failed while stopping: {_first_line(e)}{self._exits()}") from e
        if isinstance(exc, RuntimeError) and not isinstance(exc, ParisError):
            raise ParisError(f"DDP training failed: {_first_line(exc)}{self._exits()}") from exc

    def _teardown(self, *, clean: bool) -> None:
        try:
            if clean and dist.is_initialized():
                finish(self.trainer)
                dist.barrier()
                deadline = time.monotonic() + JOIN_SECONDS
                for p in self.procs:  # rank 0 hosts the group's store: the others leave first
                    p.join(max(0.0, deadline - time.monotonic()))
        finally:
            detach(self.trainer)
            if dist.is_initialized():
                dist.destroy_process_group()
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
                    p.join(10)

    def _exits(self) -> str:
        codes = [(r, p.exitcode) for r, p in enumerate(self.procs, 1) if p.exitcode not in (None, 0)]
        return "".join(f"; rank {r} exited with {c}" for r, c in codes)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@dataclass(frozen=True)
class ExpertRecipe:
    """How to build, in another process, the expert trainer rank 0 holds: the same preset, clips (lazy rows
    pickle as their file offsets), seed and slot, the same resume point (the checkpoint it loaded), the model
    assets at the paths this process verified. No held-out clips: rank 0 alone validates its checkpoints."""

    preset: ExpertPreset
    clips: ClipBatch
    seed: int
    run_id: str | None
    cluster: int | None
    efficiency: Efficiency
    state: Path | None
    assets: dict[str, Path]

    @classmethod
    def of(cls, trainer: ExpertTrainer) -> ExpertRecipe:
        at = 0 if trainer.loaded_from is None else read_meta(trainer.loaded_from).step
        if trainer.step != at:  # the others could not rebuild what only this process's memory holds
            raise ParisError(f"DDP starts from a checkpoint on disk or from the initialisation: this trainer is at "
                             f"step {trainer.step}, its last checkpoint loaded at step {at}")
        return cls(trainer.preset, trainer.clips, trainer.seed, trainer.run_id, trainer.cluster, trainer.efficiency,
                   trainer.loaded_from, registered())

    def __call__(self, device: torch.device) -> ExpertTrainer:
        register_paths(self.assets)
        trainer = ExpertTrainer(self.preset, self.clips, device=device, seed=self.seed, run_id=self.run_id,
                                cluster=self.cluster, efficiency=self.efficiency)
        if self.state is not None:
            trainer.load(self.state)
        return trainer
