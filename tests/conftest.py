"""Shared fixtures: a small synthetic data set and a tiny run, built once per test session; and the split of
the suite between two pytest-xdist workers (`-n 2`, the README's test command)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from expert.presets import get_preset
from expert.run_init import init_run
from expert.synth_dataset import write_synthetic

# Tests that start daemons, DHT nodes or attackers as real processes and bound how long the swarm takes to do
# something: one xdist worker runs them one after another, so no two of them share the two cores; the other
# worker runs everything else (in-process training and evaluation, unit tests) with one torch thread.
SERIAL_SWARM_MODULES = frozenset({
    "test_cli.py", "test_daemon_e2e.py", "test_doctor.py", "test_hostile_e2e.py", "test_netns_e2e.py",
    "test_new_run_e2e.py", "test_cas_integration.py", "test_claims_integration.py", "test_dht_integration.py",
    "test_dialback.py", "test_gossip_integration.py",
})


def _work_unit(nodeid: str) -> str:
    """The swarm tests are one unit of work (one worker, in order); every other test is a unit of its own."""
    return "swarm" if Path(nodeid.split("::", 1)[0]).name in SERIAL_SWARM_MODULES else nodeid


if importlib.util.find_spec("xdist") is not None:
    # xdist_group marks do not reach the scheduler under pytest 9.2 (xdist 3.8 rewrites `_nodeid`, which
    # pytest no longer reads), so the split is a scheduler of our own over xdist's scope scheduling
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class SerialSwarmScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _work_unit(nodeid)

        return SerialSwarmScheduling(config, log)


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker shares the machine with the swarm worker's daemons
        import torch

        torch.set_num_threads(1)


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
