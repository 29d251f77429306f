"""Training one expert (and, with the same loop, the router): flow matching on one cluster's clips,
in a loop you can read in one sitting.

`ExpertTrainer` is the API the daemon drives: build it from a preset and clips (or a run spec and a
cluster), optionally load a checkpoint, then `train(steps, ...)` with callbacks for progress and
checkpoints and a stop request honoured between steps. Every random draw comes from one CPU
`torch.Generator` whose state is checkpointed, so on CPU a resumed run equals an uninterrupted one bit for bit.
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

from expert.backbone import PixelCodec, build_backbone, build_codec
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
from expert.flow import noisy, sample_train_t, timestep
from expert.shard_rows import LazyRows
from expert.shards import ClipBatch, tokenize
from expert.text import TextEncoder
from expert.validation import HeldOut, expert_validation_loss, prepare_holdout, router_validation
from protocol.checkpoint import CheckpointMeta
from protocol.errors import ConfigMismatchError, ParisError
from protocol.model import BackboneConfig, ExpertPreset
from protocol.run import ValidationSpec
from protocol.swarm_cas import path_cid


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

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_clips(codec: nn.Module, frames, device: torch.device, *, batch: int = 8) -> torch.Tensor:
    """Every clip's latents (float32, host memory), `batch` clips at a time through the codec on `device`
    (`frames`: a tensor, an array or LazyRows: only a batch of them is in memory at once)."""
    t0 = time.perf_counter()

    def part(i: int) -> torch.Tensor:
        rows = frames[i:i + batch]
        return torch.as_tensor(np.ascontiguousarray(rows)) if not isinstance(rows, torch.Tensor) else rows

    out = torch.cat([codec.encode(part(i).to(device)).float().cpu() for i in range(0, len(frames), batch)])
    log.info("encoded %d clips into latents %s in %.1f s", len(frames), tuple(out.shape[1:]),
             time.perf_counter() - t0)
    return out


class TextStates:
    """Frozen text-encoder states for every clip, computed once per distinct caption."""

    def __init__(self, encoder: TextEncoder, tokens: np.ndarray, *, batch: int = 256) -> None:
        uniq, inverse = np.unique(tokens, axis=0, return_inverse=True)
        states = [encoder(torch.from_numpy(uniq[i : i + batch])) for i in range(0, len(uniq), batch)]
        self.states = torch.cat(states)
        self.index = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
        self.null = encoder(torch.from_numpy(tokenize([""])))[0]

    def get(self, clip_idx: torch.Tensor) -> torch.Tensor:
        return self.states[self.index[clip_idx]]


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
        self.text = TextEncoder(preset.text)
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
        self.text_states = TextStates(self.text, clips.tokens)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + (cluster or 0))
        self.step, self.samples_seen, self.skipped = 0, 0, 0
        self.shard: tuple[int, int] = (0, 1)  # (rank, world): expert.ddp sets it
        self.forward_model: nn.Module = self.model  # what the loss runs (a DistributedDataParallel of it, in DDP)
        self.loss_ema: float | None = None
        self.parent: str | None = None  # CID of the checkpoint this state descends from (None: the initialisation)
        self.loaded_from: Path | None = None  # the checkpoint folder `load` resumed from
        self.held: HeldOut | None = None
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

    def write_snapshot(self, path: Path, snap: StateSnapshot, *, validator: nn.Module | None = None
                       ) -> CheckpointMeta:
        """Atomically write `snap` (with its lineage and validation loss); refuses a state holding NaN or Inf.
        The validation loss is of the snapshot's EMA weights: computed on `validator` (a spare copy of the
        EMA model, loaded with them) when given, else on the EMA model itself (it must not have moved on).
        The written checkpoint becomes the parent of the next one."""
        model = self.ema
        if validator is not None and self.held is not None:
            validator.load_state_dict(snap.groups["ema"])
            model = validator
        val = self.validation_loss(model) if self.held is not None else None
        meta = write_checkpoint(Path(path), snap.groups, {
            **snap.fields, "parent": self.parent, "val_loss": val if val is not None and np.isfinite(val) else None})
        self.parent = path_cid(Path(path))
        return meta

    def save(self, path: Path) -> CheckpointMeta:
        """Atomically write the full training state now, in this thread (see write_snapshot)."""
        return self.write_snapshot(path, self.snapshot(copy=False))

    def load(self, path: Path) -> CheckpointMeta:
        """Resume from a checkpoint (or a training folder's LATEST), after verifying it fits this run: same
        kind, preset, run and cluster (a run-bound trainer refuses a checkpoint that names no run)."""
        path = resolve_checkpoint(Path(path))
        meta = read_meta(path)
        if meta.kind == self.kind:
            check_preset(meta, self.preset, path)
        check_slot(meta, path, kind=self.kind, run_id=self.run_id, cluster=self.cluster)
        try:
            self.model.load_state_dict(read_group(path, meta, "model"))
            self.ema.load_state_dict(read_group(path, meta, "ema"))
        except RuntimeError as e:
            raise ConfigMismatchError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
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
        path = resolve_checkpoint(Path(path))
        meta = read_meta(path)
        if meta.kind == self.kind:
            check_preset(meta, self.preset, path)
        check_slot(meta, path, kind=self.kind, run_id=self.run_id, cluster=self.cluster)
        try:
            self.ema.load_state_dict(read_group(path, meta, "ema"))
        except RuntimeError as e:
            raise ConfigMismatchError(f"checkpoint {path} does not fit the model: {str(e).splitlines()[0]}") from None
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





def optimizer_state_problem(state: dict[int, dict[str, torch.Tensor]], params: list[torch.Tensor], grad_clip: float,
                            updates: int) -> str:
    """Why an AdamW state cannot have come from training with gradients clipped to `grad_clip` ("" if it can):
    every moment fits its parameter and is finite; the first moment's norm and the second moment's sum are at
    most `grad_clip`² (averages of clipped gradients and of their squares); the second moment is not negative;
    each step counter equals the number of optimizer updates (`updates`: steps less skipped ones). A state that
    passes resumes training as its own trainer would; one that fails (a moment of 1e30 freezes the weights)
    is refused before anyone trains from it."""
    first = second = 0.0
    for i, entry in state.items():
        for name, t in entry.items():
            if name == "step":
                if t.numel() != 1 or float(t) != float(updates):
                    return f"optimizer step counter {t.flatten()[:1].tolist()} is not its {updates} updates"
                continue
            if name not in ("exp_avg", "exp_avg_sq"):
                return f"unexpected optimizer moment {name!r}"
            if t.shape != params[i].shape or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                return f"optimizer moment {i}.{name} does not fit its parameter or is not finite"
            if name == "exp_avg":
                first += float((t.double() ** 2).sum())
            elif bool((t < 0).any()):
                return f"optimizer moment {i}.exp_avg_sq is negative"
            else:
                second += float(t.double().sum())
    bound = grad_clip**2 * (1 + 1e-3) + 1e-12
    if first > bound or second > bound:
        return (f"optimizer moments (|m|² = {first:.3g}, Σv = {second:.3g}) exceed what gradients clipped to "
                f"{grad_clip:g} can leave ({grad_clip**2:g})")
    return ""


class ExpertTrainer(Trainer):
    """Flow matching for one expert with condition dropout for classifier-free guidance."""

    kind = "expert"

    def _build_model(self, seed: int) -> nn.Module:
        return build_backbone(self.preset.backbone, self.text.width, seed=seed)

    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        if self.held is None:
            return None
        return expert_validation_loss(self.ema if model is None else model, self.held,
                                      batch=self.preset.train.batch_size, device=self.device)

    def _micro_batch(self) -> tuple[torch.Tensor, ...]:
        """The preset's batch, drawn in full on every rank (so all ranks consume the RNG alike) and cut to this
        rank's share (`shard`): with DDP over R ranks, rank r trains rows r·B/R … (r+1)·B/R of the very batch one
        process would have trained."""
        tc, g = self.preset.train, self.generator
        idx = torch.randint(self.num_clips, (tc.batch_size,), generator=g)
        keep = self.shard_rows(tc.batch_size)
        x0, noise, t = self._noisy_batch(g, idx, keep)
        drop = (torch.rand(tc.batch_size, generator=g) < tc.cond_dropout).view(-1, 1, 1)[keep]
        idx = idx[keep]
        text = torch.where(drop, self.text_states.null.unsqueeze(0), self.text_states.get(idx)).to(self.device)
        return x0, noise, t, text

    def _loss(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        xt, target = noisy(x0, noise, t)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            pred = self.forward_model(xt, timestep(t), text, return_dict=False)[0]
        return nn.functional.mse_loss(pred.float(), target)

    def _micro_loss(self) -> torch.Tensor:
        return self._loss(*self._micro_batch())

    @torch.no_grad()
    def evaluate(self, batches: int = 4, seed: int = 1234, *, ema: bool = False) -> float:
        """Mean flow-matching loss on fixed clips, noise and t drawn from `seed` (no condition dropout):
        comparable across steps and runs, and it leaves the training RNG untouched."""
        tc = self.preset.train
        g = torch.Generator().manual_seed(seed)
        model = self.ema if ema else self.model
        losses = []
        for _ in range(batches):
            idx = torch.randint(self.num_clips, (tc.batch_size,), generator=g)
            x0, noise, t = self._noisy_batch(g, idx)
            xt, target = noisy(x0, noise, t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                pred = model(xt, timestep(t), self.text_states.get(idx).to(self.device), return_dict=False)[0]
            losses.append(nn.functional.mse_loss(pred.float(), target).item())
        return float(np.mean(losses))


def run_clips(spec, data_dir: Path | None = None) -> ClipBatch:
    """The run's verified clips: from `data_dir` or where `run init` saw them; the manifest must be the run's."""
    from expert.shards import load_dataset

    directory = Path(data_dir or spec.data_hint or "")
    if not str(directory) or not directory.exists():
        raise ParisError("the run's data folder is unknown or missing here: pass --data DIR")
    manifest, clips = load_dataset(directory)
    if manifest.latents is not None:  # the run's clips encoded once (`run init`'s latent cache)
        from expert.latent_data import matches

        if not matches(manifest, spec.preset, spec.data.data_id):
            raise ConfigMismatchError(f"the latents in {directory} are not this run's data encoded by its VAE")
        return clips
    if manifest != spec.data:
        raise ConfigMismatchError(f"the data in {directory} ({manifest.data_id}) is not this run's data "
                                  f"({spec.data.data_id})")
    return clips


def trainer_for_run(spec, cluster: int, *, data_dir: Path | None = None, device: torch.device | str = "cpu",
                    seed: int | None = None, efficiency: Efficiency | None = None) -> ExpertTrainer:
    """A trainer for cluster `cluster` of run `spec` (a protocol.run.RunSpec), on verified local data."""
    clips = run_clips(spec, data_dir)
    return ExpertTrainer(spec.preset, clips.select(spec.train_clips(cluster)), device=device,
                         seed=spec.seed if seed is None else seed, run_id=spec.run_id, cluster=cluster,
                         holdout=clips.select(spec.holdout_clips(cluster)), validation=spec.validation,
                         efficiency=efficiency)


class RouterTrainer(Trainer):
    """Cross-entropy of the router's logits on noisy clips x_t against their true cluster.

    Clips come from a bounded, stratified sample (at most `cap` per cluster); each cluster's loss is
    weighted by (its share of the data) / (its share of the sample), so that the optimum is still the
    posterior p(k | x_t, t) of the full data, priors included."""

    kind = "router"

    def __init__(self, preset: ExpertPreset, clips: ClipBatch, labels: np.ndarray, *,
                 data_sizes: np.ndarray | None = None, **kw) -> None:
        if preset.router is None:
            raise ParisError("a router needs a preset with a router head")
        k = preset.router.num_experts
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        sample_sizes = np.bincount(labels, minlength=k).astype(np.float64)
        sizes = sample_sizes if data_sizes is None else np.asarray(data_sizes, dtype=np.float64)
        weight = (sizes / sizes.sum()) / np.maximum(sample_sizes / sample_sizes.sum(), 1e-12)
        self.class_weight = torch.tensor(np.where(sample_sizes > 0, weight, 0.0), dtype=torch.float32)
        super().__init__(preset, clips, **kw)
        self.class_weight = self.class_weight.to(self.device)

    def _build_model(self, seed: int) -> nn.Module:
        from expert.router import Router

        return Router(self.preset.backbone, self.preset.router, self.text.width, seed=seed)

    def validation(self, model: nn.Module | None = None) -> dict | None:
        """Held-out cross-entropy and accuracy per noise level of the EMA router, or of `model` (None without a
        split)."""
        if self.held is None:
            return None
        return router_validation(self.ema if model is None else model, self.held,
                                 batch=self.preset.train.batch_size, device=self.device)

    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        report = self.validation(model)
        return None if report is None else float(report["loss"])

    def _logits(self, model: nn.Module, g: torch.Generator, idx: torch.Tensor, *, dropout: bool):
        """(trunk logits, t, the caption states it was given) for clips `idx`; with `dropout` a share
        `cond_dropout` of the captions is replaced by the null caption."""
        x0, noise, t = self._noisy_batch(g, idx)
        xt, _ = noisy(x0, noise, t)
        text = self.text_states.get(idx)
        if dropout:
            drop = (torch.rand(len(idx), generator=g) < self.preset.train.cond_dropout).view(-1, 1, 1)
            text = torch.where(drop, self.text_states.null.unsqueeze(0), text)
        text = text.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return model(xt, timestep(t), text), t, text

    def _micro_loss(self) -> torch.Tensor:
        """The trunk's cross-entropy, plus the caption prior's on the same (dropped-out) captions: a dropped
        caption teaches the prior that the null caption means p(k), so `combined` on it is p(k | x_t)."""
        g = self.generator
        idx = torch.randint(self.num_clips, (self.preset.train.batch_size,), generator=g)
        logits, _, text = self._logits(self.model, g, idx, dropout=True)
        labels = self.labels[idx].to(self.device)
        loss = nn.functional.cross_entropy(logits.float(), labels, weight=self.class_weight)
        if self.model.prior is not None:
            prior = self.model.caption_logits(text).float()
            loss = loss + nn.functional.cross_entropy(prior, labels, weight=self.class_weight)
        return loss

    @torch.no_grad()
    def evaluate(self, samples: int = 256, seed: int = 1234, *, bins: int = 5, ema: bool = True) -> dict:
        """Accuracy overall and per noise level (t in `bins` equal bins): near t=0 the clip is visible and
        the router should be right; near t=1 it is pure noise and the best is the majority cluster."""
        g = torch.Generator().manual_seed(seed)
        model = self.ema if ema else self.model
        correct, ts = [], []
        for start in range(0, samples, self.preset.train.batch_size):
            n = min(self.preset.train.batch_size, samples - start)
            idx = torch.randint(self.num_clips, (n,), generator=g)
            logits, t, _ = self._logits(model, g, idx, dropout=False)
            correct.append((logits.argmax(1).cpu() == self.labels[idx]).float())
            ts.append(t.cpu())
        c, t = torch.cat(correct), torch.cat(ts)
        edges = torch.linspace(0, 1, bins + 1)
        per_bin = {}
        for i in range(bins):
            m = (t >= edges[i]) & (t < edges[i + 1])
            if m.any():
                per_bin[f"{edges[i]:.1f}-{edges[i + 1]:.1f}"] = round(float(c[m].mean()), 4)
        return {"accuracy": round(float(c.mean()), 4), "per_noise_level": per_bin, "samples": samples}


def stratified_sample(assignments: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """At most `cap` clip indices per cluster, chosen at random with `seed`, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in np.unique(assignments):
        members = np.flatnonzero(assignments == k)
        chosen.append(members if len(members) <= cap else rng.choice(members, cap, replace=False))
    return np.sort(np.concatenate(chosen))


def light_backbone(cfg: BackboneConfig) -> BackboneConfig:
    """The light router's trunk: the experts' backbone with patches twice as large in height and width
    (a quarter of the tokens: pooled, since the router needs the video's gist, not its detail), half the
    heads and feed-forward width, and at most two blocks. Counted by torch's flop counter, that is 4.2 % (tiny)
    and 4.5 % (small) of one expert forward, half that of a guided sampling step (benchmarks/sampling_cost.py
    prints the ratio; tests/test_router_modes.py holds it under 10 %)."""
    pt, ph, pw = cfg.patch_size
    # a patch that does not tile the frame drops the last row of pixels (Wan patches with a strided conv);
    # the router pools over the video, so that only matters for pixel frames, which tile exactly here
    ph2 = ph if cfg.space == "pixel" and cfg.height % (2 * ph) else 2 * ph
    pw2 = pw if cfg.space == "pixel" and cfg.width % (2 * pw) else 2 * pw
    return cfg.model_copy(update={"patch_size": (pt, ph2, pw2), "num_layers": min(2, cfg.num_layers),
                                  "num_heads": max(1, cfg.num_heads // 2), "ffn_dim": max(8, cfg.ffn_dim // 2)})


ROUTER_CAPTION_DROPOUT = 0.5  # a caption-reading trunk learns p(k | x_t) on the null caption half the time


def router_preset(expert: ExpertPreset, num_experts: int, *, use_text: bool = True, light: bool = True,
                  caption_prior: bool = True, data_sizes=None, uniform_t: bool = True) -> ExpertPreset:
    """The run's router: the experts' backbone (or its light form) and text tower with a K-way pooled head.

    The defaults are what a run trains: a light, caption-reading trunk with caption dropout 0.5 (it serves
    the `xt` and `joint` modes), a caption prior beside it with the clusters' shares of the data (`caption`
    and `combined`), and t drawn uniformly (TrainConfig.t_uniform). `use_text=False, light=False,
    caption_prior=False, uniform_t=False` is the full-size x_t router of Paris, as it was trained before."""
    from protocol.model import RouterHead

    shares = None
    if data_sizes is not None and caption_prior:
        sizes = np.maximum(np.asarray(data_sizes, dtype=np.float64), 0)
        shares = tuple(round(max(float(v), 1e-6), 6) for v in sizes / max(sizes.sum(), 1))
    train = expert.train
    updates = {}
    if use_text:
        updates["cond_dropout"] = ROUTER_CAPTION_DROPOUT
    if uniform_t:
        updates["t_uniform"] = 1.0
    head = RouterHead(num_experts=num_experts, use_text=use_text, caption_prior=caption_prior or None,
                      cluster_prior=shares)
    return expert.model_copy(update={
        "name": f"{expert.name}-router" + ("-light" if light else ""),
        "backbone": light_backbone(expert.backbone) if light else expert.backbone,
        "train": train.model_copy(update=updates) if updates else train,
        "router": head})


def run_router_preset(spec) -> ExpertPreset:
    """The router preset of run `spec` (a protocol.run.RunSpec): what its router role trains, its verifiers
    rebuild and its store's size bound is computed from."""
    return router_preset(spec.preset, spec.num_clusters,
                         data_sizes=np.bincount(np.asarray(spec.assignments), minlength=spec.num_clusters))


def router_holdout(spec) -> list[int]:
    """Every cluster's held-out clips (global indices), cluster by cluster: the router's validation set."""
    return [i for k in range(spec.num_clusters) for i in spec.holdout_clips(k)]


def router_trainer_for_run(spec, *, data_dir: Path | None = None, cap: int = 2000, preset: ExpertPreset | None = None,
                           device: torch.device | str = "cpu", seed: int | None = None,
                           efficiency: Efficiency | None = None) -> RouterTrainer:
    """A router trainer on the run's local data; `preset` (default: the run's, `run_router_preset`) lets an
    experiment train another router (expert.train.router_preset's options)."""
    clips = run_clips(spec, data_dir)
    held = set(router_holdout(spec))
    train = [i for i in range(len(spec.assignments)) if i not in held]
    labels = np.asarray(spec.assignments)
    holdout = router_holdout(spec)
    return router_trainer_from_clips(spec, clips.select(train), labels[train], cap=cap, preset=preset,
                                     device=device, seed=seed, holdout=clips.select(holdout),
                                     holdout_labels=labels[holdout], efficiency=efficiency)


def router_trainer_from_clips(spec, clips: ClipBatch, labels: np.ndarray, *, cap: int = 2000,
                              preset: ExpertPreset | None = None,
                              device: torch.device | str = "cpu", seed: int | None = None,
                              holdout: ClipBatch | None = None, holdout_labels: np.ndarray | None = None,
                              efficiency: Efficiency | None = None) -> RouterTrainer:
    """A router trainer on a stratified sample (≤ `cap` per cluster) of `clips` labelled by cluster; the loss
    is reweighted to the cluster sizes of the whole run, which may hold more clips than `clips`. `holdout`
    (every cluster's held-out clips, labelled) gives the validation loss that verifiers recompute."""
    seed = spec.seed if seed is None else seed
    idx = stratified_sample(labels, cap, seed)
    preset = preset or run_router_preset(spec)
    return RouterTrainer(preset, clips.select(idx), labels[idx],
                         data_sizes=np.bincount(np.asarray(spec.assignments), minlength=spec.num_clusters),
                         device=device, seed=seed, run_id=spec.run_id, holdout=holdout,
                         holdout_labels=holdout_labels, validation=spec.validation if holdout is not None else None,
                         efficiency=efficiency)
