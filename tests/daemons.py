"""`paris-node join` processes for end-to-end tests: started in their own session (forked from the suite's
pre-imported zygote, tests/zygote.py, where a fork can be what a new interpreter would), read through their JSON
log, stopped by process group."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests import zygote
from tests.zygote import ENV

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from node.cli import main; main()"]
# The micro preset training a tenth of the time (join --duty-cycle): about tiny's steps per second at a ninth of its
# CPU, for scenarios whose timing needs training to last (a kill or a partition mid-training, an attacker's acts
# landing while the run trains). Scenarios that only need a run to finish take micro at full speed.
PACED = ["--preset", "micro", "--duty-cycle", "0.1"]


class Daemon:
    """One `paris-node join` process in its own session (inside a network namespace when `prefix` is
    `ip netns exec NS`); its JSON log lines are read from a file."""

    def __init__(self, home: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.home, self.log = home, home.with_suffix(".log")
        self._fh = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = zygote.popen([*prefix, *CLI, "join", "--home", str(home), *args], cwd=ROOT, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=self._fh)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if line.startswith("{"):
                    out.append(json.loads(line))
        return out

    def wait_for(self, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
        raise AssertionError(f"{what}: not seen in {timeout}s (exit {self.proc.poll()}); log ends:\n{tail}")

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process ends within `timeout` s; else an AssertionError with its log's tail."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{self.home.name} still runs {timeout}s after the stop; log ends:\n{tail}") from None

    def published(self, slot: str) -> list[int]:
        return [e["step"] for e in self.events() if e.get("msg") == f"published {slot} checkpoint"]

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill9()
        self._fh.close()


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """One `paris-node` command, run to its end."""
    return zygote.run_to_end([*CLI, *args], cwd=ROOT, env=ENV, timeout=timeout)


def status(peers_file: Path) -> dict:
    """`paris-node status --json` against the swarm that `peers_file` (a node.json) names."""
    r = cli("status", "--initial-peers-file", str(peers_file), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def slots(st: dict) -> dict[str, dict]:
    """A status's slot rows by slot name."""
    return {s["slot"]: s for s in st["slots"]}


class StatusWatch:
    """One `paris-node status --json --watch` process for a whole wait: one DHT client that reads the run every
    `interval` seconds, instead of a process (imports, p2pd, bootstrap) per look, which took a core from the
    daemons under test. Its JSON lines are read in a thread."""

    def __init__(self, peers_file: Path, interval: float = 1.0) -> None:
        self.proc = zygote.popen([*CLI, "status", "--initial-peers-file", str(peers_file), "--json", "--watch",
                                  "--interval", str(interval)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.error = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next(self, timeout: float) -> dict | None:
        """The next status (None if none came within `timeout` s, or the line was a frame's error)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        with contextlib.suppress(ValueError):
            got = json.loads(line)
            if "error" in got and "slots" not in got:
                self.error = got["error"]
                return None
            return got
        return None

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.error = self.error or self.proc.stderr.read()[-2000:]
            self.proc.stderr.close()


def wait_status(peers_file: Path, pred, timeout: float, what: str, *, watch: tuple[Daemon, ...] = ()) -> dict:
    """Follow `status --json --watch` until `pred(status)`; fails with the last status (and a dead daemon's log
    tail). A watcher that exits (the run not announced yet, say) is started again after a second."""
    deadline = time.monotonic() + timeout
    st: dict = {}
    w = StatusWatch(peers_file)
    try:
        while time.monotonic() < deadline:
            for d in watch:
                if d.proc.poll() is not None:
                    tail = "\n".join(d.log.read_text(errors="replace").splitlines()[-25:])
                    raise AssertionError(f"{d.home.name} exited ({d.proc.returncode}) while waiting for {what}:\n"
                                         f"{tail}")
            if w.proc.poll() is not None and w.lines.empty():
                w.close()
                time.sleep(1)
                w = StatusWatch(peers_file)
                continue
            got = w.next(timeout=1.0)
            if got is not None:
                st = got
                if pred(st):
                    return st
    finally:
        w.close()
    raise AssertionError(f"{what}: status never showed it in {timeout}s; last: {json.dumps(st)[:3000]}"
                         + (f"; status said: {w.error[-500:]}" if w.error else ""))


def wait_until(pred, timeout: float, what) -> None:
    """Poll `pred` every second until it holds; past `timeout`, fail with `what()` (a callable: it is only
    evaluated on failure, so it may read logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what()}")


def run_finished(st: dict) -> bool:
    """Every expert and the router have an accepted checkpoint at their targets (the acceptance rule's view)."""
    return bool(st.get("slots")) and all(
        s["verified_step"] is not None and s["target"] is not None and s["verified_step"] >= s["target"]
        for s in st["slots"])


class Evil:
    """An attacker process (a script in tests/swarm/: evil_trainer.py, squatter.py, patient_attacker.py,
    raw_forger.py) dialing the swarm that `peers_file` names; its JSON acts are collected, and `send` writes a
    command to its stdin. A fork of the zygote like the daemons, so its acts land as early in a run as a running
    peer's would (forked, started 8 s sooner, the patient attacker found two bugs of ours: a copy's content
    verdict counted before its lease check, and a crash in mark_done), except the patient attacker: forked, its
    three DHT nodes in one process had a store that no node took in 1 of 8 runs (3 of 5 in an earlier note),
    against none as a process of its own; until that is understood it starts as one."""

    def __init__(self, home, peers_file, script: str = "evil_trainer.py", *args: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log = open(home / "evil.log", "wb")  # noqa: SIM115 (closed in stop())
        extra = list(args) if args else ["--interval", "10"]
        self.proc = zygote.popen(
            [sys.executable, f"tests/swarm/{script}", "--peers-file", str(peers_file), "--home", str(home), *extra],
            cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, fork=None if script != "patient_attacker.py" else False)
        self.acts: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.acts.append(json.loads(line))
            except ValueError:
                continue

    def act(self, name: str) -> dict | None:
        return next((a for a in self.acts if a.get("act") == name), None)

    def send(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()
