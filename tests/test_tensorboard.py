"""Loss curves for TensorBoard: the daemon's training driver (and train-local, through the same LossBoard)
writes every step's training loss and every checkpoint's validation loss per slot, read back here with
TensorBoard's own event reader."""

from __future__ import annotations

import pytest

from node.driver import Cadence, TrainingDriver
from node.tensorboard import TRAIN_TAG, VALIDATION_TAG, LossBoard, slot_of


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_driver_logs_each_step_and_each_checkpoints_validation_loss(tiny_run, synth_dir, tmp_path):
    from expert.train_expert import trainer_for_run

    spec, _ = tiny_run
    trainer = trainer_for_run(spec, 1, data_dir=synth_dir)
    board = LossBoard(tmp_path / "tb")
    seen = []
    driver = TrainingDriver(trainer, 3, tmp_path / "ck", Cadence(2, 3600), board=board,
                            on_checkpoint=lambda path, meta: seen.append(meta))
    assert driver.run()
    board.close()
    assert slot_of(trainer) == "expert-1" and [m.step for m in seen] == [2, 3]
    scalars = _scalars(tmp_path / "tb" / "expert-1")
    assert [s for s, _ in scalars[TRAIN_TAG]] == [1, 2, 3]
    assert scalars[VALIDATION_TAG] == [(m.step, pytest.approx(m.val_loss, rel=1e-6)) for m in seen]


def test_skipped_steps_are_left_out_and_a_bad_folder_is_one_line(tmp_path):
    from protocol.errors import ParisError

    board = LossBoard(tmp_path / "tb")
    board.train("router", 1, 0.5)
    board.train("router", 2, None)
    board.train("router", 3, float("nan"))
    board.validation("router", 3, 0.25)
    board.close()
    assert _scalars(tmp_path / "tb" / "router") == {TRAIN_TAG: [(1, 0.5)], VALIDATION_TAG: [(3, 0.25)]}
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ParisError, match="cannot write there"):
        LossBoard(tmp_path / "file").train("router", 1, 0.5)
