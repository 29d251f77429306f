"""What a run with stored text states must show, whatever its encoder family (open_clip tower or a
transformers encoder): the data set holds each caption's states as the encoder computes them, and an expert
trains and validates on this machine with the encoder's weights forgotten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ParisError
from tests.commands import no_known_assets


def check_stored_states(spec, data_dir: Path, make_encoder, steps: int = 1, also=None):
    """`make_encoder(text_config)` builds the run's encoder; `also()` runs more work with the weights forgotten
    (a router, say). Returns the opened clips."""
    from expert.shards import open_dataset
    from expert.train_expert import ExpertTrainer

    _, clips = open_dataset(data_dir)
    want = make_encoder(spec.preset.text).encode_captions(clips.captions[:3])
    assert np.allclose(clips.text_states[np.arange(3)], want.numpy(), atol=1e-2)  # float16 on disk
    with no_known_assets():  # nothing may load the encoder from here on
        trainer = ExpertTrainer(spec.preset, clips.select(spec.train_clips(0)), seed=0, run_id=spec.run_id,
                                cluster=0, holdout=clips.select(spec.holdout_clips(0)), validation=spec.validation)
        assert trainer.text is None
        assert trainer.train(steps) == steps and trainer.validation_loss() is not None
        if also is not None:
            also()
        with pytest.raises(ParisError, match="not on this machine"):
            make_encoder(spec.preset.text)  # it really is gone
    return clips
