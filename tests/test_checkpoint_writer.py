"""Checkpoints written in the background (expert.checkpoint_writer through node.driver): the same checkpoints as
writing them in the training thread, training goes on while one is written, and a failed write is raised."""

import threading
from pathlib import Path

import pytest
import torch

from expert import checkpoint_writer
from expert.checkpoint import NonFiniteStateError, read_group, read_meta, resolve_checkpoint, step_dir
from expert.train_expert import trainer_for_run
from node.driver import Cadence, TrainingDriver
from protocol.swarm_cas import path_cid


def _validated(tiny_run):
    spec, _ = tiny_run
    trainer = trainer_for_run(spec, 0)
    assert trainer.held is not None  # the run has a held-out split: checkpoints carry a validation loss
    return trainer


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
@pytest.mark.parametrize("inline", [False, True])  # validated in the writer thread, or in the training thread
def test_background_checkpoints_equal_the_ones_written_in_the_training_thread(tiny_run, tmp_path, monkeypatch,
                                                                              inline):
    monkeypatch.setattr(checkpoint_writer, "validates_inline", lambda device: inline)
    sync = _validated(tiny_run)
    sync.train(6, checkpoint_dir=tmp_path / "sync", checkpoint_every=2)
    seen = []
    driven = _validated(tiny_run)
    driver = TrainingDriver(driven, 6, tmp_path / "async", Cadence(2, 1e9),
                            on_checkpoint=lambda path, meta: seen.append((path, meta.step)))
    assert driver.run()
    assert [s for _, s in seen] == [2, 4, 6] and driver.writer.written == 3
    assert driver.writer.inline is inline and driven.validation_seconds > 0
    for step in (4, 6):  # the two newest are kept
        a, b = step_dir(tmp_path / "sync", step), step_dir(tmp_path / "async", step)
        ma, mb = read_meta(a), read_meta(b)
        assert ma.val_loss is not None and ma.val_loss == mb.val_loss  # of the snapshot's EMA, not a later one
        assert (ma.step, ma.samples_seen, ma.loss_ema) == (mb.step, mb.samples_seen, mb.loss_ema)
        for group in ("ema", "model", "optimizer", "rng"):
            ta, tb = read_group(a, ma, group), read_group(b, mb, group)
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), group
    newest = resolve_checkpoint(tmp_path / "async")
    assert newest.name == "step-00000006"
    assert read_meta(newest).parent == path_cid(step_dir(tmp_path / "async", 4))  # the lineage is in order
    assert driven.parent == path_cid(newest)


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_training_goes_on_while_a_checkpoint_is_written(tiny_run, tmp_path, monkeypatch):
    trainer = _validated(tiny_run)
    real = trainer.write_snapshot
    stepped_past = threading.Event()
    during: list[bool] = []

    def slow_write(path, snap, **kw):
        # the first write waits until training has taken a step past its snapshot: if a write stalled
        # training, that never happens and the wait times out
        if snap.step == 2:
            during.append(stepped_past.wait(timeout=120))
        return real(path, snap, **kw)

    monkeypatch.setattr(trainer, "write_snapshot", slow_write)
    driver = TrainingDriver(trainer, 4, tmp_path / "ck", Cadence(2, 1e9))
    real_progress = driver._on_progress

    def on_progress(p):
        real_progress(p)
        if p.step == 3:  # the step after checkpoint 2 was handed over
            stepped_past.set()

    driver._on_progress = on_progress
    assert driver.run()
    assert during == [True]  # step 3 was trained while step 2 was being written
    assert read_meta(resolve_checkpoint(tmp_path / "ck")).step == 4
    assert driver.writer.written == 2


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_a_failed_write_is_raised_in_the_training_thread(tiny_run, tmp_path, monkeypatch):
    trainer = _validated(tiny_run)

    def refuse(path, snap, **kw):
        raise NonFiniteStateError("refusing to save a checkpoint: model/x holds NaN or Inf")

    monkeypatch.setattr(trainer, "write_snapshot", refuse)
    driver = TrainingDriver(trainer, 6, tmp_path / "ck", Cadence(2, 1e9))
    with pytest.raises(NonFiniteStateError):
        driver.run()
    assert trainer.step < 6  # the next checkpoint's submit raised it: training did not run on unsaved


def test_the_duty_cycle_rests_in_proportion_to_each_step():
    from node.driver import rest_after

    assert rest_after(0.2, 1.0) == 0.0
    assert rest_after(0.2, 0.5) == pytest.approx(0.2)
    assert rest_after(0.1, 0.1) == pytest.approx(0.9)  # training takes a tenth of the time
    with pytest.raises(ValueError, match="duty_cycle"):
        TrainingDriver(None, 1, Path("unused"), Cadence(1, 1.0), duty_cycle=0.0)


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_a_driver_under_a_duty_cycle_rests_between_steps_and_a_stop_ends_the_rest(tiny_run, tmp_path):
    """`join --duty-cycle D`: a real trainer's driver rests (1 - D) / D of each step between steps and none after
    the last; a stop during a rest ends it at the next step boundary, with the last step's checkpoint written."""
    trainer = _validated(tiny_run)
    half = TrainingDriver(trainer, 3, tmp_path / "half", Cadence(3, 1e9), duty_cycle=0.5)
    assert half.run() and half.steps_done == 3
    assert 0 < half.rested_seconds < half.train_seconds  # two rests, each as long as its step
    assert step_dir(tmp_path / "half", 3).is_dir()

    trainer = _validated(tiny_run)
    crawl = TrainingDriver(trainer, 5, tmp_path / "crawl", Cadence(5, 1e9), duty_cycle=1e-4)  # ~10^4 × a step
    threading.Timer(1.0, crawl.stop.set).start()
    assert crawl.run() is False and crawl.steps_done == 1
    assert crawl.train_seconds < crawl.rested_seconds / 10  # the rest it asked for was cut short
    assert resolve_checkpoint(tmp_path / "crawl").name == "step-00000001"
