"""`paris-node join` processes for end-to-end tests: started in their own session, read through their JSON
log, stopped by process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from node.cli import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "140"}


class Daemon:
    """One `paris-node join` process in its own session (inside a network namespace when `prefix` is
    `ip netns exec NS`); its JSON log lines are read from a file."""

    def __init__(self, home: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.home, self.log = home, home.with_suffix(".log")
        self._fh = open(self.log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([*prefix, *CLI, "join", "--home", str(home), *args], cwd=ROOT, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=self._fh, start_new_session=True)

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
    return subprocess.run([*CLI, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def status(peers_file: Path) -> dict:
    """`paris-node status --json` against the swarm that `peers_file` (a node.json) names."""
    r = cli("status", "--initial-peers-file", str(peers_file), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def wait_status(peers_file: Path, pred, timeout: float, what: str, *, watch: tuple[Daemon, ...] = ()) -> dict:
    """Poll `status --json` until `pred(status)`; fails with the last status (and a dead daemon's log tail)."""
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        for d in watch:
            if d.proc.poll() is not None:
                tail = "\n".join(d.log.read_text(errors="replace").splitlines()[-25:])
                raise AssertionError(f"{d.home.name} exited ({d.proc.returncode}) while waiting for {what}:\n{tail}")
        st = status(peers_file)
        if pred(st):
            return st
        time.sleep(2)
    raise AssertionError(f"{what}: status never showed it in {timeout}s; last: {json.dumps(st)[:3000]}")


def run_finished(st: dict) -> bool:
    """Every expert and the router have an accepted checkpoint at their targets (the acceptance rule's view)."""
    return bool(st.get("slots")) and all(
        s["verified_step"] is not None and s["target"] is not None and s["verified_step"] >= s["target"]
        for s in st["slots"])
