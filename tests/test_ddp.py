"""One expert on two devices with DistributedDataParallel (gloo, two CPU processes): `train-local --gpu cpu,cpu
--ddp` takes the same steps as one process on the whole batch, since each rank trains half of the very batch
one process would draw and DDP averages the gradients."""

from __future__ import annotations

import subprocess

import pytest

from expert.checkpoint import read_group, read_meta, resolve_checkpoint
from tests.daemons import CLI, ENV, ROOT

pytestmark = pytest.mark.slow

STEPS = 20


def _train(run_file, out, *gpu: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "train-local", "--run", str(run_file), "--cluster", "1", "--steps", str(STEPS),
                           "--out", str(out), *gpu], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


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
