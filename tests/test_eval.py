import json

import numpy as np
import pytest

from expert.evaluate import EVAL_SEED, evaluate_synthetic
from expert.synth_classifier import generator_clips, train_judge
from tests.commands import cli_inproc

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
    from expert.train_expert import trainer_for_run

    spec, _ = tiny_run
    trainer_for_run(spec, 0).train(1, checkpoint_dir=tmp_path / "ck")
    proc = cli_inproc("eval", "--checkpoint", str(tmp_path / "ck"), "--n", "4", "--steps", "2", "--judge",
                      str(judge_dir[1]), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] == 4 and np.isfinite(report["fvd_synth"])
    assert set(report["attribute_accuracy"]) == {"shape", "colour", "motion", "background"}
    denoised = report["denoised_accuracy"]["expert"]
    assert set(denoised) == set(report["conditioning_ratio"]["expert"]) == {"t=0.98", "t=0.9", "t=0.5", "t=0.1"}
    assert all(set(level) == {"with_caption", "without_caption"} for level in denoised.values())
    text = cli_inproc("eval", "--checkpoint", str(tmp_path / "ck"), "--n", "4", "--steps", "2", "--judge",
                      str(judge_dir[1]))
    assert text.returncode == 0 and "one-step x̂₀ of expert" in text.stdout, text.stderr


def test_real_clips_are_matched_to_the_generated_frames_and_size(judge_dir):
    """An 8-frame model that reproduces the real clips (at its own frame rate) scores like the real clips."""
    judge, _ = judge_dir

    def perfect_8_frames(prompts, seed):
        return generator_clips(EVAL_SEED, len(prompts), start=seed - EVAL_SEED)[0][:, ::2]

    good = evaluate_synthetic(perfect_8_frames, judge, n=16)
    assert abs(good["fvd_synth"]) < 1e-6
    assert good["attribute_accuracy"] == good["attribute_accuracy_on_real_clips"]


def test_fvd_and_clip_similarity_are_added_when_their_networks_are_given(judge_dir, tiny_run, tmp_path):
    """Random-init I3D and CLIP saved as local files, through `paris-node eval --i3d --clip-weights`."""
    import torch

    from expert.clip_score import ClipScorer
    from expert.i3d import InceptionI3d
    from expert.train_expert import trainer_for_run

    torch.manual_seed(0)
    torch.save(InceptionI3d().state_dict(), tmp_path / "rgb_imagenet.pt")
    torch.save(ClipScorer.random_init("ViT-S-32").model.state_dict(), tmp_path / "clip.pt")
    spec, _ = tiny_run
    trainer_for_run(spec, 0).train(1, checkpoint_dir=tmp_path / "ck")
    proc = cli_inproc("eval", "--checkpoint", str(tmp_path / "ck"), "--n", "4", "--steps", "2", "--judge",
                      str(judge_dir[1]), "--i3d", str(tmp_path / "rgb_imagenet.pt"), "--clip-weights",
                      str(tmp_path / "clip.pt"), "--clip-model", "ViT-S-32", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert np.isfinite(report["fvd"]) and report["fvd"] > 0
    assert -1 <= report["clip_similarity"] <= 1 and -1 <= report["clip_similarity_on_real_clips"] <= 1
    bad = cli_inproc("eval", "--checkpoint", str(tmp_path / "ck"), "--judge", str(judge_dir[1]), "--i3d",
                     str(tmp_path / "missing.pt"))
    assert bad.returncode != 0 and "not found" in " ".join((bad.stderr + bad.stdout).split())  # rich wraps lines
