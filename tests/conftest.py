"""Shared fixtures: a small synthetic data set and a tiny run, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from expert.presets import get_preset
from expert.run_init import init_run
from expert.synth_dataset import write_synthetic


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, clips=240, seed=7, clips_per_shard=100)
    return out


@pytest.fixture(scope="session")
def tiny_run(synth_dir, tmp_path_factory):
    spec = init_run(synth_dir, 2, preset=get_preset("tiny"), seed=0, name="test")
    path = tmp_path_factory.mktemp("run") / "run.json"
    spec.save(path)
    return spec, path
