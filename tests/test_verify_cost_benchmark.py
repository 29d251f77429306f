"""benchmarks/verify_cost.py runs and reports what its docstring promises: the swarm's verification cost at the
run's rates and the measured detection probability beside its formula."""

from __future__ import annotations

import json
import sys

import pytest

from tests import zygote
from tests.daemons import ENV, ROOT


def test_measured_detection_follows_the_formula():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from verify_cost import detection

    for c in (1, 2, 3):
        d = detection(10, c, intervals=6000)
        assert d["measured"] == pytest.approx(d["formula"], abs=0.015), d


@pytest.mark.slow
def test_verify_cost_smoke():
    r = zygote.run_to_end([sys.executable, "benchmarks/verify_cost.py", "--presets", "tiny", "--interval", "5",
                           "--replays", "1", "--clips", "60", "--json"], cwd=ROOT,
                          env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    tiny = out["results"][0]
    assert tiny["replay_exact"] == 1 and tiny["swarm_ratio"] > 0
    assert [d["checkers"] for d in out["detection"]] == [1, 2, 3]
