"""A new run on an existing network: a plain hivemind DHT node (no paris-node code) is the only bootstrap; one
daemon publishes a run from a `run init` spec with `join --initial-peers … --run FILE`; a second joins it by
run id and trains. Also: a --run that is neither a run id nor a spec file is a one-line error."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import zygote
from tests.daemons import ENV, ROOT, Daemon, cli

pytestmark = pytest.mark.slow

BOOTSTRAP = """
import sys, time, hivemind
dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], nat_port_map=False, auto_nat=False,
                   use_relay=False)
print(str(dht.get_visible_maddrs()[0]), flush=True)
deadline = time.monotonic() + 900
while time.monotonic() < deadline and not sys.stdin.closed:
    if sys.stdin.readline() in ("", "quit\\n"):
        break
dht.shutdown()
"""


def test_join_with_a_run_file_publishes_it_into_an_existing_network(tiny_run, synth_dir, tmp_path):
    spec, run_file = tiny_run
    boot = zygote.popen([sys.executable, "-c", BOOTSTRAP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV)
    daemons: list[Daemon] = []
    try:
        maddr = boot.stdout.readline().strip()
        assert "/p2p/" in maddr, maddr
        args = ["--period", "1", "--cpu-threads", "1", "--log-format", "json", "--initial-peers", maddr]
        creator = Daemon(tmp_path / "creator", *args, "--run", str(run_file), "--data", str(synth_dir),
                         "--role", "verifier", "--router-steps", "5", "--checkpoint-every", "5")
        daemons.append(creator)
        ready = creator.wait_for(lambda e: e.get("msg", "").startswith("new run published into the swarm"), 240,
                                 "the run is published")
        # the spec named no creator: this node became it, and the run id commits to its key
        owned = creator.wait_for(lambda e: e.get("msg", "").startswith("the run spec names no creator"), 5, "owner")
        run_id = owned["run"]
        assert run_id != spec.run_id and run_id in ready["msg"]
        joiner = Daemon(tmp_path / "joiner", *args, "--run", run_id, "--role", "expert")
        daemons.append(joiner)
        joiner.wait_for(lambda e: e.get("msg") == "run ready" and e.get("run") == run_id, 240, "joins by id")
        joiner.wait_for(lambda e: e.get("msg", "").startswith("published expert-"), 300, "trains and publishes")
        info = json.loads((tmp_path / "creator" / "node.json").read_text())
        assert info["run_id"] == run_id and info["join_command"].endswith(f"--run {run_id}")
        creator.wait_for(lambda e: e.get("msg", "").startswith("attested expert-"), 300, "the creator verifies")
    finally:
        for d in daemons:
            d.stop()
        _stop(boot)


def test_a_run_that_is_neither_an_id_nor_a_file_or_of_another_creator_is_a_one_line_error(tiny_run, synth_dir,
                                                                                          tmp_path):
    boot = zygote.popen([sys.executable, "-c", BOOTSTRAP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV)
    try:
        maddr = boot.stdout.readline().strip()
        t0 = time.monotonic()
        r = cli("join", "--home", str(tmp_path / "h"), "--initial-peers", maddr, "--run", "no such thing!")
        assert r.returncode != 0 and "neither a run id nor a run spec file" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and time.monotonic() - t0 < 180
        # someone else's spec: only its creator (whose key its run id commits to) can publish it
        from protocol.run import RunSpec
        from swarm.identity import load_identity

        theirs = RunSpec.model_validate({**tiny_run[0].model_dump(),
                                         "creator": load_identity(tmp_path / "them").public_key_bytes.decode()})
        theirs.save(tmp_path / "theirs.json")
        r = cli("join", "--home", str(tmp_path / "h"), "--initial-peers", maddr, "--run", str(tmp_path / "theirs.json"),
                "--data", str(synth_dir))
        assert r.returncode != 0 and "belongs to another creator" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    finally:
        _stop(boot)


def _stop(proc) -> None:
    """Kill the bootstrap's whole process group: hivemind forks a DHT process and a p2pd under it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
