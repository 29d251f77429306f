"""What a trainer trains on: the run's verified clips, their latents encoded once, and the frozen text
states of their captions computed once (no encoder runs inside the training step)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from expert.shard_rows import LazyRows
from expert.shards import ClipBatch, tokenize
from expert.text import TextEncoder
from protocol.errors import ConfigMismatchError, ParisError

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
    """Frozen text-encoder states for every clip: computed here once per distinct caption (an open_clip tower),
    or read as the run's data stores them (a stored encoder: computed once at `run init`, never loaded here)."""

    def __init__(self, states, index: torch.Tensor | None, null: torch.Tensor) -> None:
        self.states, self.index, self.null = states, index, null

    @classmethod
    def computed(cls, encoder: TextEncoder, tokens: np.ndarray, *, batch: int = 256) -> TextStates:
        uniq, inverse = np.unique(tokens, axis=0, return_inverse=True)
        states = torch.cat([encoder(torch.from_numpy(uniq[i : i + batch])) for i in range(0, len(uniq), batch)])
        return cls(states, torch.from_numpy(inverse.reshape(-1).astype(np.int64)),
                   encoder(torch.from_numpy(tokenize([""])))[0])

    @classmethod
    def stored(cls, clips: ClipBatch) -> TextStates:
        if clips.text_states is None or clips.text_null is None:
            raise ParisError("the run's text encoder is stored, but its data holds no text states: encode it "
                             "with `run init` (the data must be the run's encoded data set)")
        rows = clips.text_states
        states = rows if isinstance(rows, LazyRows) else torch.from_numpy(np.ascontiguousarray(rows))
        return cls(states, None, torch.from_numpy(np.asarray(clips.text_null)).float())

    @classmethod
    def of(cls, clips: ClipBatch, encoder: TextEncoder | None) -> TextStates:
        return cls.stored(clips) if encoder is None else cls.computed(encoder, clips.tokens)

    def get(self, clip_idx: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            return self.states[self.index[clip_idx]]
        if isinstance(self.states, LazyRows):
            return torch.from_numpy(self.states[clip_idx.numpy()]).float()
        return self.states[clip_idx].float()


def run_clips(spec, data_dir: Path | None = None) -> ClipBatch:
    """The run's verified clips: from `data_dir` or where `run init` saw them; the manifest must be the run's."""
    from expert.shards import load_dataset

    directory = Path(data_dir or spec.data_hint or "")
    if not str(directory) or not directory.exists():
        raise ParisError("the run's data folder is unknown or missing here: pass --data DIR")
    manifest, clips = load_dataset(directory)
    if manifest.latents is not None or manifest.text is not None:  # encoded once (`run init`'s cache)
        from expert.latent_data import matches

        if not matches(manifest, spec.preset, spec.data.data_id):
            raise ConfigMismatchError(f"the data in {directory} is not this run's data encoded by its VAE and "
                                      "text encoder")
        return clips
    if manifest != spec.data:
        raise ConfigMismatchError(f"the data in {directory} ({manifest.data_id}) is not this run's data "
                                  f"({spec.data.data_id})")
    return clips
