"""Shared fixtures (a small synthetic data set and a tiny run, built once per test session), and how the suite
runs over xdist workers (tests/schedule.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expert.presets import get_preset
from expert.run_init import init_run
from expert.synth_dataset import write_synthetic
from tests import schedule


def pytest_configure(config: pytest.Config) -> None:
    schedule.configure(config)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        # the workers share the cores: each computes with its share of them (one thread each on two cores)
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count leaves it as it found it: under xdist a leaked count (one test set
    2) made every later test on that worker compute with both cores while the other worker used them too."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        schedule.order_items(items)


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
