"""One expert on two devices with DistributedDataParallel (gloo, two CPU processes): `train-local --gpu cpu,cpu
--ddp` takes the same steps as one process on the whole batch, since each rank trains half of the very batch
one process would draw and DDP averages the gradients."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expert.checkpoint import read_group, read_meta, resolve_checkpoint
from tests import zygote
from tests.daemons import CLI, ENV, ROOT

pytestmark = pytest.mark.slow

STEPS = 20


def _train(run_file, out, *gpu: str) -> subprocess.CompletedProcess:
    return zygote.run_to_end([*CLI, "train-local", "--run", str(run_file), "--cluster", "1", "--steps", str(STEPS),
                              "--out", str(out), *gpu], cwd=ROOT, env=ENV, timeout=600)


def test_ddp_over_two_processes_matches_one_process_on_the_whole_batch(tiny_run, tmp_path):
    _, run_file = tiny_run
    one = _train(run_file, tmp_path / "one", "--gpu", "cpu")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(run_file, tmp_path / "two", "--gpu", "cpu,cpu", "--ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "trained on 2 devices" in two.stdout
    a, b = resolve_checkpoint(tmp_path / "one"), resolve_checkpoint(tmp_path / "two")
    ma, mb = read_meta(a), read_meta(b)
    assert ma.step == mb.step == STEPS and ma.samples_seen == mb.samples_seen
    assert abs(ma.loss_ema - mb.loss_ema) <= 1e-4 * abs(ma.loss_ema)
    for group in ("model", "ema"):
        wa, wb = read_group(a, ma, group), read_group(b, mb, group)
        assert wa.keys() == wb.keys()
        worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
        print(f"{group}: largest difference {worst:.3g}")
        assert worst < 1e-5, f"{group}: largest difference {worst}"
    # the tolerance is tight: the steps taken move weights far more than that (model against its EMA)
    wm, we = read_group(a, ma, "model"), read_group(a, ma, "ema")
    moved = max(float((wm[k] - we[k]).abs().max()) for k in wm)
    print(f"model against its EMA: {moved:.3g}")
    assert moved > 1e-3


def test_ddp_refuses_what_it_cannot_do(tiny_run, tmp_path):
    _, run_file = tiny_run
    r = _train(run_file, tmp_path / "x", "--gpu", "cpu", "--ddp")
    assert r.returncode != 0 and "--ddp needs two or more devices" in r.stderr
    r = _train(run_file, tmp_path / "x", "--gpu", "cpu,cpu,cpu", "--ddp")
    assert r.returncode != 0 and "does not split over 3 devices" in r.stderr


def test_ctrl_c_in_the_terminal_stops_every_rank_at_a_step_boundary(tiny_run, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the followers ignore it, rank 0 stops at the next
    step, writes that step's checkpoint and tells them to stop; everything exits 0."""
    _, run_file = tiny_run
    out = tmp_path / "interrupted"
    proc = zygote.popen([*CLI, "train-local", "--run", str(run_file), "--cluster", "1", "--steps", "100000",
                         "--out", str(out), "--checkpoint-every", "2", "--gpu", "cpu,cpu", "--ddp"],
                        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "LATEST").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    step = read_meta(resolve_checkpoint(out)).step
    assert f"at step {step}," in stdout and "trained on 2 devices" in stdout
    assert "Traceback" not in stderr and "SIGABRT" not in stderr


def test_a_follower_whose_rank_0_is_killed_exits(tmp_path):
    """The parent watch of a spawned rank: kill -9 its parent and it exits on its own (NCCL would otherwise
    wait out the collective's timeout)."""
    script = ("import os, subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'from expert.ddp import _watch_parent; "
              "_watch_parent(%d)' % os.getpid()])\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(5)  # the child has imported torch and is watching
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and _state(child) != "Z":
            assert time.monotonic() < deadline, "the follower outlived its rank 0"
            time.sleep(0.2)
    finally:
        parent.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_a_recipe_rebuilds_only_what_is_on_disk(tiny_run, tmp_path):
    """A follower rebuilds rank 0's trainer from its clips, seed and the checkpoint it loaded: a trainer that
    has taken steps since (held only in memory) is refused, one that resumed is rebuilt at the same step."""
    from expert.ddp import ExpertRecipe
    from expert.train_expert import trainer_for_run
    from protocol.errors import ParisError
    from protocol.run import RunSpec

    spec = RunSpec.load(tiny_run[1])
    t = trainer_for_run(spec, 1)
    assert ExpertRecipe.of(t).state is None
    t.train(2, checkpoint_dir=tmp_path / "ck", checkpoint_every=2)
    with pytest.raises(ParisError, match="at step 2"):
        ExpertRecipe.of(t)
    resumed = trainer_for_run(spec, 1)
    resumed.load(tmp_path / "ck")
    again = ExpertRecipe.of(resumed)(resumed.device)
    mine, theirs = resumed.model.state_dict(), again.model.state_dict()
    assert again.step == 2 and mine.keys() == theirs.keys()
    assert all(bool((mine[k] == theirs[k]).all()) for k in mine)
