"""Fixtures for the swarm tests: real node processes on 127.0.0.1 that are always stopped (by pid)."""

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

import pytest

from tests import zygote
from tests.zygote import ENV

ROOT = Path(__file__).resolve().parents[2]


class NodeProc:
    """One child process speaking JSON lines; stdout is read by a thread so reads can time out."""

    def __init__(self, argv: list[str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = zygote.popen(  # a fork of the pre-imported zygote where it can be one (tests/zygote.py)
            [sys.executable, *argv], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env=ENV, start_new_session=True,  # its own process group: kill9 also takes its p2pd and DHT children
        )
        self._lines: queue.Queue[dict] = queue.Queue()
        self.dumps_stacks = False  # the node said it writes every thread's stack to its log on SIGUSR1
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("stacks") == "SIGUSR1":
                self.dumps_stacks = True
            self._lines.put(msg)

    def send(self, obj: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60.0, where=lambda m: True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                msg = self._lines.get(timeout=left)
            except queue.Empty:
                lines = 30
                if timeout >= 10 and self.dumps_stacks and self.proc.poll() is None:  # a silent node: where is it?
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGUSR1)
                        time.sleep(1.0)
                        lines = 120
                raise TimeoutError(f"no matching message from pid {self.proc.pid} in {timeout}s "
                                   f"(exit code {self.proc.poll()}); its log ends:\n{self.log_tail(lines)}") from None
            if where(msg):
                return msg

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill9(self) -> None:
        """SIGKILL the node and every process it started (its own process group, never anything else)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def ask_to_quit(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"op": "quit"})

    def stop(self, grace: float = 15.0) -> None:
        """Ask the node to exit cleanly, then SIGKILL its process group whatever happened."""
        self.ask_to_quit()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(grace, 0.0))
        self.kill9()  # also reaps helpers left in the group by a clean exit
        self._log.close()


@pytest.fixture(scope="module")
def spawn():
    """`spawn(script, log_path, *args) -> NodeProc`; every process spawned is stopped when the module ends,
    whatever happened to its tests (all are asked to quit at once, then each is killed by process group)."""
    started: list[NodeProc] = []

    def _spawn(script: str, log_path: Path, *args: str) -> NodeProc:
        proc = NodeProc([script, *args], log_path)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.ask_to_quit()
    deadline = time.monotonic() + 15
    for proc in started:
        proc.stop(grace=deadline - time.monotonic())
