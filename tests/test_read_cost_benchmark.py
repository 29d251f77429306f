"""benchmarks/read_cost.py runs: N records read twice on two real hivemind nodes on loopback."""

from __future__ import annotations

import json
import sys

import pytest

from tests import zygote
from tests.daemons import ENV, ROOT

pytestmark = pytest.mark.slow


def test_read_cost_smoke():
    r = zygote.run_to_end([sys.executable, "benchmarks/read_cost.py", "--records", "40", "--rereads", "4", "--json"],
                          cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stored"] == out["read"] == 40 and out["again_s"] > 0
    assert out["reread_cpu_s_together"] > 0 and out["reread_cpu_s_per_key"] > 0
