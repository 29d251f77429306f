"""How `.ci/run` spreads the suite over two xdist workers (tests/schedule.py): whole files, the longest first, the
next file handed out only to a worker down to its last test; and the seconds per file written to refresh it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests import schedule

pytest.importorskip("xdist")


class FakeWorker:
    """What the scheduler uses of xdist's WorkerController: the tests it is sent, and its shutdown."""

    def __init__(self, name: str) -> None:
        self.name, self.sent, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _config() -> SimpleNamespace:
    options = SimpleNamespace(loadscopereorder=True, tx=["2*popen"])
    return SimpleNamespace(option=options, getvalue=lambda name: getattr(options, name))


def test_files_go_longest_first_and_the_unmeasured_last_in_collection_order():
    seconds = {"tests/b.py": 5.0, "tests/a.py": 90.0, "tests/gone.py": 300.0}
    assert schedule.longest_first(["tests/a.py", "tests/new.py", "tests/b.py", "tests/z.py"], seconds) == [
        "tests/a.py", "tests/b.py", "tests/new.py", "tests/z.py"]
    items = [SimpleNamespace(nodeid=n) for n in ("tests/b.py::t1", "tests/a.py::t1", "tests/b.py::t2",
                                                 "tests/new.py::t", "tests/a.py::t2")]
    schedule.order_items(items, seconds)
    assert [i.nodeid for i in items] == ["tests/a.py::t1", "tests/a.py::t2", "tests/b.py::t1", "tests/b.py::t2",
                                         "tests/new.py::t"]


def test_a_worker_gets_its_next_file_only_when_down_to_its_last_test():
    collection = ["tests/long.py::a", "tests/long.py::b", "tests/long.py::c", "tests/mid.py::a", "tests/one.py::a",
                  "tests/short.py::a", "tests/short.py::b"]
    config = _config()
    sched = schedule.make_scheduler(config, None)
    assert config.option.loadscopereorder is False  # xdist's default puts the files with most tests first
    w0, w1 = FakeWorker("gw0"), FakeWorker("gw1")
    for w in (w0, w1):
        sched.add_node(w)
        sched.add_node_collection(w, collection)
    sched.schedule()
    # the two longest files first, one each; no worker holds a second file while it has two tests to run
    assert w0.sent == [[0, 1, 2]] and w1.sent == [[3], [4]]  # mid.py's one test cannot run alone: one.py too
    sched.mark_test_complete(w0, 0)
    assert len(w0.sent) == 1  # two of long.py still to run
    sched.mark_test_complete(w0, 1)
    assert w0.sent[-1] == [5, 6]  # down to its last test: short.py
    assert not sched.workqueue
    for i in (2, 5):
        sched.mark_test_complete(w0, i)
    sched.mark_test_complete(w0, 6)
    assert w0.shutting_down


def test_the_seconds_of_each_file_are_written_for_the_next_run(tmp_path):
    out = tmp_path / "durations.json"
    plugin = schedule.DurationsPlugin(out)
    for nodeid, seconds in (("tests/a.py::x", 1.25), ("tests/b.py::y", 7.0), ("tests/a.py::z", 2.0)):
        plugin.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=seconds))
    plugin.pytest_sessionfinish()
    assert json.loads(out.read_text()) == {"tests/b.py": 7.0, "tests/a.py": 3.2}
    assert list(json.loads(out.read_text())) == ["tests/b.py", "tests/a.py"]
    assert schedule.read_durations(out) == {"tests/b.py": 7.0, "tests/a.py": 3.2}
    (tmp_path / "broken.json").write_text("{")
    assert schedule.read_durations(tmp_path / "broken.json") == {}


def test_the_durations_file_names_files_that_exist():
    """A renamed test file would silently lose its place in the order: the list is kept to what exists."""
    root = schedule.DURATIONS.parent.parent
    listed = schedule.read_durations()
    assert listed and all((root / f).is_file() for f in listed), [f for f in listed if not (root / f).is_file()]
