"""The suite's fork server (tests/zygote.py): a fork is what a new `python` process would have been, for what
the end-to-end tests rely on (argv, directory, environment, stdio, session, pid, exit status, signals, random
state, hash seed, network namespace), and what it cannot be is started as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns, zygote
from tests.zygote import ENV, Forked

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _zygote_on(monkeypatch):
    monkeypatch.setenv("PARIS_TEST_ZYGOTE", "1")  # off by default in the suite (tests/zygote.py says why)


PY = sys.executable
SHOW = """names = sorted(n for n in globals() if not n.startswith("__"))
import json, os, random, sys, numpy, torch
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "pid": os.getpid(),
                  "sid": os.getsid(0), "pgid": os.getpgid(0), "env": os.environ.get("PARIS_X"),
                  "hash": hash("paris"), "rand": [random.random(), float(numpy.random.rand()), torch.rand(1).item()],
                  "main": names}))
sys.exit(int(sys.argv[1]))
"""


def _show(*args: str, cwd=None, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    r = zygote.run_to_end([PY, "-c", SHOW, *args], cwd=cwd or os.getcwd(), env=env or ENV, timeout=60)
    return r, json.loads(r.stdout)


def test_a_fork_is_the_command_line_it_was_asked_for(tmp_path):
    r, got = _show("7", "x y", cwd=tmp_path, env={**ENV, "PARIS_X": "given"})
    assert r.returncode == 7, r.stderr
    assert got["argv"] == ["-c", "7", "x y"] and got["cwd"] == str(tmp_path) and got["path0"] == ""
    assert got["env"] == "given" and got["main"] == []  # the zygote's own names are not in the command's
    assert got["sid"] == got["pid"] == got["pgid"]  # its own session, as start_new_session=True

    script = tmp_path / "script.py"
    script.write_text("import sys; print(sys.argv, sys.path[0], __name__); raise SystemExit('bad input')")
    r = zygote.run_to_end([PY, str(script), "a"], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path / "lib")},
                          timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "bad input"
    assert r.stdout.strip() == f"{[str(script), 'a']} {tmp_path} __main__"

    r = zygote.run_to_end([PY, "-c", "raise ValueError('boom')"], cwd=tmp_path, env=ENV, timeout=60)
    assert r.returncode == 1 and r.stderr.rstrip().endswith("ValueError: boom")


def test_each_fork_draws_its_own_random_numbers_and_the_turns_hash_differently():
    runs = [_show("0")[1] for _ in range(4)]
    assert len({tuple(r["rand"]) for r in runs}) == 4  # python's, numpy's and torch's global generators
    assert len({r["pid"] for r in runs}) == 4
    assert len({r["hash"] for r in runs}) == zygote.ZYGOTES  # one hash seed per zygote, taken in turn


def test_signals_exit_statuses_and_the_process_group(tmp_path):
    code = ("import os, signal, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(child.pid, flush=True)\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
            "for line in sys.stdin: print('echo', line.strip(), flush=True)\n"
            "time.sleep(600)\n")
    proc = zygote.popen([PY, "-c", code], cwd=tmp_path, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert isinstance(proc, Forked)
    grandchild = int(proc.stdout.readline())
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"echo hello\n" and proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    proc.send_signal(signal.SIGTERM)  # its own handler: a clean exit with its own code
    assert proc.wait(20) == 5
    os.kill(grandchild, 0)  # what it started lives on, as after a real process's exit
    os.killpg(proc.pid, signal.SIGKILL)  # its process group still holds the grandchild
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{grandchild}"):
        if Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        assert not os.path.exists(f"/proc/{grandchild}"), "the process group's kill missed the grandchild"

    proc = zygote.popen([PY, "-c", "import time; time.sleep(600)"], cwd=tmp_path, env=ENV)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(20) == -signal.SIGKILL and proc.returncode == -signal.SIGKILL

    with pytest.raises(subprocess.TimeoutExpired):
        zygote.run_to_end([PY, "-c", "import time; time.sleep(600)"], cwd=tmp_path, env=ENV, timeout=0.5)


def test_what_a_fork_cannot_be_is_a_real_process(tmp_path):
    for argv, env in (([PY, "-c", "pass"], {**ENV, "OMP_NUM_THREADS": "2"}),  # read while torch imports
                      ([PY, "-X", "dev", "-c", "pass"], ENV), (["/bin/true"], ENV)):
        proc = zygote.popen(argv, cwd=tmp_path, env=env)
        assert isinstance(proc, subprocess.Popen), argv
        assert proc.wait(60) == 0


@pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "")
def test_a_fork_enters_a_network_namespace_as_ip_netns_exec_does():
    net = netns.Lan()
    try:
        ip = net.host("a", 9)
        code = "import socket; s = socket.socket(); s.bind(('" + ip + "', 0)); print(s.getsockname()[0])"
        r = zygote.run_to_end([*net.argv("a"), PY, "-c", code], cwd=os.getcwd(), env=ENV, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == ip, r.stderr  # the address exists only in there
        r = zygote.run_to_end([PY, "-c", code], cwd=os.getcwd(), env=ENV, timeout=60)
        assert r.returncode != 0 and "Cannot assign requested address" in r.stderr
    finally:
        net.close()


def test_a_child_that_cannot_start_is_an_error_as_with_popen(tmp_path):
    with pytest.raises(OSError, match="FileNotFoundError"):
        zygote.popen([PY, "-c", "pass"], cwd=tmp_path / "no such directory", env=ENV)
    assert zygote.run_to_end([PY, "-c", "print('still serving')"], cwd=tmp_path, env=ENV,
                             timeout=60).stdout == "still serving\n"


def test_a_fork_killed_holding_an_import_time_lock_blocks_no_later_fork(tmp_path):
    """hivemind makes multiprocessing locks while it imports (a semaphore in memory a fork shares): forks of one
    zygote shared them, and a daemon killed -9 while it held one left every later DHT process blocked."""
    locks = ("import time\nfrom hivemind.utils.mpfuture import MPFuture\n"
             "from hivemind.utils.asyncio import _AsyncContextWrapper as W\n"
             "locks = (MPFuture._update_lock, MPFuture._initialization_lock, W.EXECUTOR_LOCK)\n")
    hold = locks + "for lock in locks: lock.acquire()\nprint('held', flush=True)\ntime.sleep(600)"
    for _ in range(zygote.ZYGOTES):  # one holder forked from each zygote, killed while it holds the locks
        proc = zygote.popen([PY, "-c", hold], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"held\n"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(20)
    take = locks + "print(all(lock.acquire(timeout=5) for lock in locks))"
    for _ in range(zygote.ZYGOTES):
        r = zygote.run_to_end([PY, "-c", take], cwd=tmp_path, env=ENV, timeout=60)
        assert r.stdout.strip() == "True", r.stderr
