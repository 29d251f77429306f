"""benchmarks/cas_throughput.py runs (a small payload): on loopback, and across a shaped veth link between two
network namespaces it creates, and then removes (where this machine lets it: root, iproute2)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import zygote
from tests.zygote import ENV

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _bench(*args: str) -> dict:
    r = zygote.run_to_end([sys.executable, "benchmarks/cas_throughput.py", "--mib", "8", "--repeat", "1",
                           "--providers", "2", "--json", *args], cwd=ROOT, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _namespaces() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def _check(report: dict) -> None:
    assert report["mib"] == 8 and set(report["mib_per_s"]) == {"cas", "hivemind_raw", "hivemind_raw_to_disk",
                                                                 "tcp_raw"}
    assert all(v > 0 for v in report["mib_per_s"].values())
    many = report["several_providers"]
    assert many["providers"] == 2 and sum(many["bytes_per_provider"].values()) == 8 << 20


def test_on_loopback():
    report = _bench()
    _check(report)
    assert report["path"] == "loopback"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
                    reason="network namespaces need root and iproute2")
def test_across_a_shaped_link_whose_namespaces_are_removed_afterwards():
    before = _namespaces()
    report = _bench("--link-mbit", "400")
    _check(report)
    assert report["path"] == "a 400 Mbit/s link"
    assert report["mib_per_s"]["tcp_raw"] < 400 / 8 * 1.2  # the link, not loopback, set the pace
    assert _namespaces() == before
