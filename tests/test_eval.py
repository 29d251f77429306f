import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expert.evaluate import EVAL_SEED, evaluate_synthetic
from expert.synth_classifier import generator_clips, train_judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    judge = train_judge(clips=160, steps=30, batch=16, heldout=40)
    path = tmp_path_factory.mktemp("judge") / "judge"
    judge.save(path)
    return judge, path


def test_a_perfect_sampler_scores_like_real_data_and_a_wrong_one_does_not(judge_dir):
    judge, _ = judge_dir
    n = 24

    def perfect(prompts, seed):  # returns exactly the real clips of these prompts
        start = seed - EVAL_SEED
        return generator_clips(EVAL_SEED, len(prompts), start=start)[0]

    def wrong(prompts, seed):  # clips of other prompts, shifted in colour
        clips = generator_clips(EVAL_SEED + 1, len(prompts), start=seed - EVAL_SEED)[0]
        return np.ascontiguousarray(clips[..., ::-1])

    good = evaluate_synthetic(perfect, judge, n=n)
    bad = evaluate_synthetic(wrong, judge, n=n)
    assert abs(good["fvd_synth"]) < 1e-6
    assert good["attribute_accuracy"] == good["attribute_accuracy_on_real_clips"]
    assert bad["fvd_synth"] > 0.01


def test_eval_command_on_an_expert_checkpoint(judge_dir, tiny_run, tmp_path):
    from expert.train import trainer_for_run

    spec, _ = tiny_run
    trainer_for_run(spec, 0).train(1, checkpoint_dir=tmp_path / "ck")
    proc = subprocess.run([sys.executable, "-m", "node.cli", "eval", "--checkpoint", str(tmp_path / "ck"),
                           "--n", "4", "--steps", "2", "--judge", str(judge_dir[1]), "--json"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] == 4 and np.isfinite(report["fvd_synth"])
    assert set(report["attribute_accuracy"]) == {"shape", "colour", "motion", "background"}
