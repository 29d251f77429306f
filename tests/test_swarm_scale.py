"""benchmarks/swarm_scale.py at toy size: the simulated swarm, run on the real records, layout, acceptance,
claim and verifier-assignment code, keeps the issue's bounds (every key far under a reply, per-period work a
small fraction of the period, each checkpoint checked by at most the quorum plus two, the trainer uploading
each checkpoint about once), and its DHT refuses an oversize read instead of answering with nothing."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest

from protocol.errors import IntegrityError
from tests.daemons import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import swarm_scale


@pytest.mark.parametrize("quorum", [1, 2])
def test_toy_swarm_keeps_the_bounds(quorum):
    with contextlib.redirect_stdout(io.StringIO()):
        out = swarm_scale.main(["--experts", "4", "--verifiers", "6", "--peers", "40", "--steps", "40000",
                                "--quorum", str(quorum), "--churn", "0.1", "--record-cost", "0.0004", "--json"])
    assert out["accepted"] >= out["checkpoints"] - out["lease_changes"] and out["accepted"] >= 4 * 20 - 4
    assert out["max_key_bytes"] < 1024 * 1024
    for kind, bound in out["bound_by_kind"].items():
        assert out["max_bytes_by_kind"].get(kind, 0) <= bound, (kind, out["max_bytes_by_kind"])
    assert out["work_fraction_per_period"]["max"] <= 0.10
    assert out["checkers_per_checkpoint"]["max"] <= quorum + 2
    assert out["upload_per_checkpoint"]["mean"] <= 1.0 + 0.5 * quorum  # ~1 with one checker, re-served after
    assert out["series"] and out["series"][-1]["step"] == 40000


def test_an_oversize_read_is_an_error_not_an_empty_answer():
    dht = swarm_scale.SimDHT()
    dht.keys["paris/r/checkpoints"] = {str(i): (b"x" * 4096, 10.0) for i in range(1100)}
    with pytest.raises(IntegrityError, match="reply limit"):
        dht.get("paris/r/checkpoints", 0.0)
