"""How the suite is spread over pytest-xdist workers (`.ci/run` runs `-n 2`): whole files, the longest first.

A test file is one unit of work, as with xdist's `--dist loadfile` (module fixtures such as the eight-node claim
swarm are built once). The units go out in the order of `tests/durations.json`, the seconds each file took in
a whole-suite run, longest first; a file missing from it goes last (the ones added since are small until
measured; xdist itself would put the files with the most tests first). A worker gets its next file only when it
is down to its last test: xdist's own rule gives a worker two files ahead, and the longest end-to-end file
could then wait behind a short one while the other worker idled at the end. `PARIS_TEST_DURATIONS_OUT=FILE`
writes this run's seconds per file, to refresh the list."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def longest_first(files: list[str], seconds: dict[str, float]) -> list[str]:
    """The files in the order their units are handed out: known ones by their seconds, longest first, then the
    unknown ones in collection order."""
    known = sorted((f for f in files if f in seconds), key=lambda f: -seconds[f])
    return known + [f for f in files if f not in seconds]


def read_durations(path: Path = DURATIONS) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}


def order_items(items: list[pytest.Item], seconds: dict[str, float] | None = None) -> None:
    """In each worker: its collection in hand-out order (xdist's queue follows the workers' collections, which
    must be identical, and sends tests by their index in them)."""
    files = list(dict.fromkeys(file_of(i.nodeid) for i in items))
    rank = {f: n for n, f in enumerate(longest_first(files, read_durations() if seconds is None else seconds))}
    items.sort(key=lambda i: rank[file_of(i.nodeid)])  # stable: a file's tests keep their order


def make_scheduler(config: pytest.Config, log):
    """The xdist scheduler: LoadFileScheduling with the hand-out rule above."""
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False  # xdist would put the files with the most tests first

    class LongestFileFirst(LoadFileScheduling):
        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return LongestFileFirst(config, log)


class DurationsPlugin:
    """In the controller: sums each file's test seconds (setup, call and teardown) and writes them at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self) -> None:
        data = {f: round(s, 1) for f, s in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.out)


class SchedulerPlugin:
    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        return make_scheduler(config, log)


def configure(config: pytest.Config) -> None:
    """Called from tests/conftest.py: the scheduler where xdist runs, the durations writer where asked."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None):
        config.pluginmanager.register(SchedulerPlugin(), "paris-schedule")
    if os.environ.get("PARIS_TEST_DURATIONS_OUT"):
        config.pluginmanager.register(DurationsPlugin(Path(os.environ["PARIS_TEST_DURATIONS_OUT"])),
                                      "paris-durations")
