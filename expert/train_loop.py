"""The training loop shared by experts and the router, readable in one sitting: AdamW with warm-up, EMA,
clipping, accumulation, non-finite steps skipped, exact checkpoints.

A trainer is built from a preset and clips, optionally loads a checkpoint, then `train(steps, ...)` runs with
callbacks for progress and checkpoints and a stop request honoured between steps. Every random draw comes from
one CPU `torch.Generator` whose state is checkpointed, so on CPU a resumed run equals an uninterrupted one bit
for bit. What the model is and what one micro-batch's loss is live in `train_expert` and `train_router`.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from expert.backbone import PixelCodec, build_codec
from expert.checkpoint import (
    check_preset,
    check_slot,
    publish_latest,
    read_group,
    read_meta,
    resolve_checkpoint,
    step_dir,
    write_checkpoint,
)
from expert.efficiency import (
    Efficiency,
    adamw,
    checkpointing_on,
    enable_checkpointing,
    is_out_of_memory,
    prepare_device,
    retry_with_checkpointing,
)
from expert.flow import sample_train_t
from expert.optimizer_state import optimizer_state_problem
from expert.shard_rows import LazyRows
from expert.shards import ClipBatch
from expert.text import TextEncoder
from expert.train_inputs import TextStates, encode_clips
from expert.validation import HeldOut, prepare_holdout
from protocol.checkpoint import CheckpointMeta
from protocol.errors import ConfigMismatchError, ParisError
from protocol.model import ExpertPreset
from protocol.run import ValidationSpec
from protocol.swarm_cas import path_cid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateSnapshot:
    """What a checkpoint holds, taken at one step boundary: tensors by file stem, and the metadata fields
    (all but the lineage and validation loss, which are filled in when it is written)."""

    step: int
    groups: dict[str, dict[str, torch.Tensor]]
    fields: dict


@dataclass(frozen=True)
class Progress:
    step: int
    loss: float | None  # None when the step was skipped
    loss_ema: float | None
    samples_per_s: float
    lr: float
    skipped_total: int


class Trainer:
    """The loop shared by experts and the router: AdamW with warm-up, EMA, clipping, accumulation,
    non-finite steps skipped, exact checkpoints. Subclasses say what the model is and what one
    micro-batch's loss is (`_build_model`, `_micro_loss`)."""

    kind = "expert"

    def __init__(self, preset: ExpertPreset, clips: ClipBatch, *, device: torch.device | str = "cpu",
                 seed: int = 0, run_id: str | None = None, cluster: int | None = None,
                 holdout: ClipBatch | None = None, holdout_labels: np.ndarray | None = None,
                 validation: ValidationSpec | None = None, efficiency: Efficiency | None = None) -> None:
        if len(clips) == 0:
            raise ParisError("no clips to train on")
        self.preset, self.run_id, self.cluster = preset, run_id, cluster
        self.clips, self.seed = clips, seed  # what built it (expert.ddp rebuilds the same trainer in each rank)
        self.device = torch.device(device)
        self.efficiency = efficiency or Efficiency()
        prepare_device(self.device)
        tc = preset.train
        # a stored encoder's states come with the data (computed once at `run init`): it is never loaded here
        self.text: TextEncoder | None = None if preset.text.stored else TextEncoder(preset.text)
        self.text_width = preset.text.width if self.text is None else self.text.width
        self.model = self._build_model(seed).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = adamw(self.model.parameters(), tc, self.device)
        if self.efficiency.grad_checkpointing == "on" and not enable_checkpointing(self.model):
            raise ParisError(f"gradient checkpointing is not available for the {self.kind} model")
        if self.efficiency.compile:
            self.model.compile()  # in place: parameter names and checkpoints are unchanged
        self.num_clips = len(clips)
        # latent presets train on latents: a latent data set's (encoded once, when the run was made: no VAE
        # here at all), or every clip through the VAE once, here (the frames are then let go); pixel presets
        # encode a batch by rescaling it
        # Either may be a LazyRows (expert.shard_rows: `open_dataset`'s data, left on disk; a batch reads its rows)
        self.frames: torch.Tensor | LazyRows | None = None
        self.latents: torch.Tensor | LazyRows | None = None
        if clips.latents is not None:
            self.latents = self._checked_latents(clips.latents)
        elif preset.backbone.space == "latent":
            self.latents = encode_clips(self.codec, clips.pixels(), self.device)
        else:
            frames = clips.pixels()
            self.frames = frames if isinstance(frames, LazyRows) else torch.from_numpy(np.ascontiguousarray(frames))
        self.text_states = TextStates.of(clips, self.text)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + (cluster or 0))
        self.step, self.samples_seen, self.skipped = 0, 0, 0
        self.shard: tuple[int, int] = (0, 1)  # (rank, world): expert.ddp sets it
        self.forward_model: nn.Module = self.model  # what the loss runs (a DistributedDataParallel of it, in DDP)
        self.loss_ema: float | None = None
        self.parent: str | None = None  # CID of the checkpoint this state descends from (None: the initialisation)
        self.loaded_from: Path | None = None  # the checkpoint folder `load` resumed from
        self.held: HeldOut | None = None
        # the checkpoints' validation losses so far: wall seconds, and the process's CPU seconds meanwhile (its
        # own cost when nothing else runs); benchmarks/daemon_overhead.py counts them apart from the harness
        self.validation_seconds = self.validation_cpu_seconds = 0.0
        if holdout is not None and validation is not None and len(holdout):
            labels = holdout_labels if holdout_labels is not None else np.full(len(holdout), cluster or 0)
            self.held = prepare_holdout(holdout, labels, validation, self.codec if holdout.latents is None else None,
                                        self.text)

    @functools.cached_property
    def codec(self) -> PixelCodec:
        """Frames ↔ the space the model denoises: built when first needed (a trainer fed latents never is)."""
        return build_codec(self.preset.backbone).to(self.device)

    def _checked_latents(self, latents: np.ndarray | LazyRows) -> torch.Tensor | LazyRows:
        """A latent data set's latents, if they have the shape this preset's model denoises."""
        b = self.preset.backbone
        if b.space != "latent" or latents.shape[1] != b.in_channels:
            raise ParisError(f"the data holds latents of shape {tuple(latents.shape[1:])}, which preset "
                             f"{self.preset.name!r} does not denoise")
        return latents if isinstance(latents, LazyRows) else torch.from_numpy(np.ascontiguousarray(latents))

    def _rows(self, rows: torch.Tensor | LazyRows, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the frames or latents, read from disk when they are kept there."""
        if isinstance(rows, LazyRows):
            return torch.from_numpy(rows[idx.numpy()])
        return rows[idx]

    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        """The run's deterministic validation loss of the EMA weights, or of `model` (a model of the same
        architecture); None without a held-out split."""
        raise NotImplementedError

    def checkpoint_validation(self, model: nn.Module | None = None) -> float | None:
        """`validation_loss` for a checkpoint, timed into `validation_seconds` and `validation_cpu_seconds`."""
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.validation_loss(model)
        finally:
            self.validation_seconds += time.perf_counter() - t0
            self.validation_cpu_seconds += time.process_time() - c0

    def _build_model(self, seed: int) -> nn.Module:
        raise NotImplementedError

    def _micro_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def _noisy_batch(self, g: torch.Generator, idx: torch.Tensor, keep: slice = slice(None)
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, noise, t) for clips `idx`, with the experts' noise schedule (logit-normal t); noise and t are
        drawn for all of `idx`, then only rows `keep` are returned (and read)."""
        tc = self.preset.train
        with torch.no_grad():
            if self.latents is not None:
                x0 = self._rows(self.latents, idx[keep]).to(self.device).float()
            else:
                assert self.frames is not None
                x0 = self.codec.encode(self._rows(self.frames, idx[keep]).to(self.device))
        noise = torch.randn((len(idx), *x0.shape[1:]), generator=g)[keep].to(self.device)
        t = sample_train_t(len(idx), g, mean=tc.logit_normal_mean, std=tc.logit_normal_std,
                           uniform=tc.t_uniform)[keep].to(self.device)
        return x0, noise, t

    def shard_rows(self, batch: int) -> slice:
        """This rank's rows of a batch of `batch` (all of them without DDP)."""
        rank, world = self.shard
        if batch % world:
            raise ParisError(f"a batch of {batch} does not split evenly over {world} DDP processes")
        return slice(rank * batch // world, (rank + 1) * batch // world)

    def all_reduce(self, loss: float, finite: bool) -> tuple[float, bool]:
        """The step's loss averaged over DDP ranks, and whether it was finite on every one (so that all
        ranks skip the same steps); as it is without DDP."""
        return loss, finite

    # --- one step -------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tc = self.preset.train
        return tc.lr * min(1.0, (step + 1) / max(tc.warmup_steps, 1))

    def train_step(self) -> float | None:
        """One optimizer step (over `grad_accum` micro-batches). Returns the loss, or None when the step
        was skipped because the loss or the gradient was not finite (weights are left untouched). A step that
        runs out of device memory is retried once with gradient checkpointing on (`auto`), on the same batch."""
        rng, step, seen, skipped = self.generator.get_state(), self.step, self.samples_seen, self.skipped
        try:
            return self._train_step()
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not retry_with_checkpointing(self.efficiency.grad_checkpointing, checkpointing_on(self.model), e):
                if is_out_of_memory(e):
                    raise ParisError(f"out of device memory at batch {self.preset.train.batch_size} "
                                     "(with --grad-checkpointing off or already on): use a device with more "
                                     "memory") from None
                raise
            if not enable_checkpointing(self.model):
                raise
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.generator.set_state(rng)
        self.step, self.samples_seen, self.skipped = step, seen, skipped
        log.warning("out of device memory at batch %d: gradient checkpointing is on from now, retrying the step",
                    self.preset.train.batch_size)
        return self._train_step()

    def _train_step(self) -> float | None:
        tc = self.preset.train
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        finite = True
        for _ in range(tc.grad_accum):
            loss = self._micro_loss()
            if not torch.isfinite(loss):
                finite = False
                if self.shard[1] == 1:
                    break  # under DDP every rank must still run its backward (its all-reduce): NaN then skips all
            (loss / tc.grad_accum).backward()
            total += loss.detach().item() / tc.grad_accum
        total, finite = self.all_reduce(total, finite)
        if finite:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            finite = bool(torch.isfinite(norm))
        self.step += 1
        self.samples_seen += tc.batch_size * tc.grad_accum
        if not finite:
            self.opt.zero_grad(set_to_none=True)
            self.skipped += 1
            return None
        self.opt.step()
        self._update_ema()
        self.loss_ema = total if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * total
        return total

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.preset.train.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)

    # --- the loop -------------------------------------------------------------------------------------
    def train(self, steps: int, *, on_progress: Callable[[Progress], None] | None = None,
              checkpoint_dir: Path | None = None, checkpoint_every: int | None = None,
              on_checkpoint: Callable[[Path, CheckpointMeta], None] | None = None,
              stop: threading.Event | None = None) -> int:
        """Run up to `steps` steps; stops early (at a step boundary) when `stop` is set. Writes a checkpoint
        every `checkpoint_every` steps and at the end when `checkpoint_dir` is given. Returns steps done."""
        every = checkpoint_every or self.preset.train.checkpoint_every
        done, last_saved = 0, self.step
        while done < steps and not (stop and stop.is_set()):
            t0 = time.perf_counter()
            loss = self.train_step()
            done += 1
            if on_progress:
                dt = max(time.perf_counter() - t0, 1e-9)
                sps = self.preset.train.batch_size * self.preset.train.grad_accum / dt
                on_progress(Progress(self.step, loss, self.loss_ema, sps, self.lr_at(self.step - 1), self.skipped))
            if checkpoint_dir is not None and self.step % every == 0:
                self.checkpoint(checkpoint_dir, on_checkpoint)
                last_saved = self.step
        if checkpoint_dir is not None and self.step != last_saved:
            self.checkpoint(checkpoint_dir, on_checkpoint)
        return done

    def checkpoint(self, root: Path, on_checkpoint=None) -> tuple[Path, CheckpointMeta]:
        """Save the full state as `root/step-N` and point `root/LATEST` at it (older ones pruned)."""
        path = step_dir(root, self.step)
        meta = self.save(path)
        publish_latest(root, path)
        if on_checkpoint:
            on_checkpoint(path, meta)
        return path, meta

    # --- state ----------------------------------------------------------------------------------------
    def state_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        opt_state = self.opt.state_dict()["state"]
        optimizer = {f"{i}.{k}": v for i, st in opt_state.items() for k, v in st.items()}
        return {
            "ema": dict(self.ema.state_dict()),
            "model": dict(self.model.state_dict()),
            "optimizer": optimizer,
            "rng": {"generator": self.generator.get_state()},
        }

    def snapshot(self, *, copy: bool = True) -> StateSnapshot:
        """The training state as a checkpoint holds it, taken at a step boundary. With `copy` the tensors are
        copied into host memory, so that training can go on while the copy is written."""
        groups = self.state_groups()
        if copy:
            groups = {g: {k: v.detach().to("cpu", copy=True) for k, v in ts.items()} for g, ts in groups.items()}
        return StateSnapshot(step=self.step, groups=groups, fields={
            "kind": self.kind, "run_id": self.run_id, "cluster": self.cluster, "step": self.step,
            "samples_seen": self.samples_seen, "loss_ema": self.loss_ema, "skipped_steps": self.skipped,
            "preset": self.preset})

    def write_snapshot(self, path: Path, snap: StateSnapshot, *, validator: nn.Module | None = None,
                       val_loss: float | None = None) -> CheckpointMeta:
        """Atomically write `snap` (with its lineage and validation loss); refuses a state holding NaN or Inf.
        The validation loss is of the snapshot's EMA weights: `val_loss` when the caller computed it already
        (at the snapshot's step boundary), else computed here on `validator` (a spare copy of the EMA model,
        loaded with them) when given, else on the EMA model itself (it must not have moved on). The written
        checkpoint becomes the parent of the next one."""
        val = val_loss
        if val is None and self.held is not None:
            model = self.ema
            if validator is not None:
                validator.load_state_dict(snap.groups["ema"])
                model = validator
            val = self.checkpoint_validation(model)
        meta = write_checkpoint(Path(path), snap.groups, {
            **snap.fields, "parent": self.parent, "val_loss": val if val is not None and np.isfinite(val) else None})
        self.parent = path_cid(Path(path))
        return meta

    def save(self, path: Path) -> CheckpointMeta:
        """Atomically write the full training state now, in this thread (see write_snapshot)."""
        return self.write_snapshot(path, self.snapshot(copy=False))

    def _fitting(self, path: Path) -> tuple[Path, CheckpointMeta]:
        """The checkpoint at `path` (or a training folder's LATEST) and its metadata, once it is known to fit
        this trainer: same kind, preset, run and cluster."""
        path = resolve_checkpoint(Path(path))
        meta = read_meta(path)
        if meta.kind == self.kind:
            check_preset(meta, self.preset, path)
        check_slot(meta, path, kind=self.kind, run_id=self.run_id, cluster=self.cluster)
        return path, meta

    @staticmethod
    def _load_weights(path: Path, meta: CheckpointMeta, modules: dict[str, nn.Module]) -> None:
        """Load each named group of the checkpoint into its module; a shape that does not fit is one line."""
        try:
            for group, module in modules.items():
                module.load_state_dict(read_group(path, meta, group))
        except RuntimeError as e:
            raise ConfigMismatchError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None

    def load(self, path: Path) -> CheckpointMeta:
        """Resume from a checkpoint (or a training folder's LATEST), after verifying it fits this run: same
        kind, preset, run and cluster (a run-bound trainer refuses a checkpoint that names no run)."""
        path, meta = self._fitting(path)
        self._load_weights(path, meta, {"model": self.model, "ema": self.ema})
        self._load_optimizer(read_group(path, meta, "optimizer"), path, updates=meta.step - meta.skipped_steps)
        try:
            self.generator.set_state(read_group(path, meta, "rng")["generator"])
        except (KeyError, RuntimeError, TypeError) as e:
            raise ConfigMismatchError(f"checkpoint {path}: its RNG state is not a generator state ({e})") from None
        self.step, self.samples_seen, self.skipped = meta.step, meta.samples_seen, meta.skipped_steps
        self.loss_ema = meta.loss_ema
        self.parent, self.loaded_from = path_cid(path), path
        return meta

    def load_sampling_weights(self, path: Path) -> CheckpointMeta:
        """Load only a checkpoint's EMA weights (what sampling and the validation loss use), after the same
        checks as `load`: enough to verify a checkpoint fetched without its training state (SAMPLING_FILES).
        The trainer's own step, optimizer and RNG are left as they were: it cannot resume from this."""
        path, meta = self._fitting(path)
        self._load_weights(path, meta, {"ema": self.ema})
        return meta

    def _load_optimizer(self, flat: dict[str, torch.Tensor], path: Path, *, updates: int) -> None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            i, _, name = key.partition(".")
            if not i.isdigit() or not name:
                raise ConfigMismatchError(f"checkpoint {path}: unexpected optimizer entry {key!r}")
            state.setdefault(int(i), {})[name] = value
        groups = self.opt.state_dict()["param_groups"]
        params = [p for g in self.opt.param_groups for p in g["params"]]
        if any(i >= len(params) for i in state):
            raise ConfigMismatchError(f"checkpoint {path}: optimizer state does not fit the model")
        if why := optimizer_state_problem(state, params, self.preset.train.grad_clip, updates):
            raise ConfigMismatchError(f"checkpoint {path}: {why}")
        self.opt.load_state_dict({"state": state, "param_groups": groups})
