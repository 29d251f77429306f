"""Measuring your own run: the held-out clips read back per cluster, prompts from them or from a file, and
each expert and routing strategy scored against them (FVD with a random-init I3D, the CLIP score with a
random-init open_clip; real classes, meaningless weights)."""

from __future__ import annotations

import numpy as np
import pytest

from expert.evaluate_run import Target, heldout_clips, interleave, read_prompts, score, targets_for
from expert.shards import load_dataset
from protocol.errors import ConfigMismatchError, ParisError


def test_heldout_clips_are_each_clusters_own(tiny_run, synth_dir, tmp_path):
    spec, _ = tiny_run
    held = heldout_clips(spec, synth_dir)
    _, clips = load_dataset(synth_dir)
    for k in range(spec.num_clusters):
        want = clips.select(spec.holdout_clips(k))
        assert len(held[k]) == len(want) >= 8
        assert (held[k].frames == want.frames).all() and held[k].captions == want.captions
    with pytest.raises(ParisError, match="pass --data DIR"):
        heldout_clips(spec.model_copy(update={"data_hint": None}), None)
    from expert.synth_dataset import write_synthetic

    write_synthetic(tmp_path / "other", clips=24, seed=1)
    with pytest.raises(ConfigMismatchError, match="is not this run's pixel data"):
        heldout_clips(spec, tmp_path / "other")


def test_prompts_come_from_a_file_or_from_every_cluster_in_turn(tmp_path):
    (tmp_path / "p.txt").write_text("# my prompts\na red ball\n\n  a blue cube  \n")
    assert read_prompts(tmp_path / "p.txt") == ["a red ball", "a blue cube"]
    (tmp_path / "one.txt").write_text("only one\n")
    with pytest.raises(ParisError, match="holds 1 prompt"):
        read_prompts(tmp_path / "one.txt")
    with pytest.raises(ParisError, match="cannot read prompts file"):
        read_prompts(tmp_path / "missing.txt")
    assert interleave([["a0", "a1", "a2"], ["b0"], ["c0", "c1"]], 5) == ["a0", "b0", "c0", "a1", "c1"]


def test_targets_compare_an_expert_with_its_cluster_and_a_strategy_with_all(tiny_run, synth_dir):
    spec, _ = tiny_run
    held = heldout_clips(spec, synth_dir)

    def never(prompts, seed):
        raise AssertionError

    targets = targets_for(held, {0: never, 1: never}, {"top1": never}, n=5, extra={0: {"val_loss": 0.5}})
    assert [t.name for t in targets] == ["expert_0", "expert_1", "top1"]
    assert targets[0].prompts == held[0].captions[:5] and targets[0].extra == {"val_loss": 0.5}
    assert len(targets[1].reference) == len(held[1]) and len(targets[2].reference) == len(held[0]) + len(held[1])
    assert targets[2].prompts[:2] == [held[0].captions[0], held[1].captions[0]] == targets[2].paired[1][:2]
    assert (targets[2].paired[0][1] == held[1].frames[0]).all() and len(targets[2].paired[0]) == 5
    from_file = targets_for(held, {0: never}, {"top1": never}, n=5, prompts=["p", "q"])
    assert all(t.prompts == ["p", "q"] for t in from_file)


def test_fvd_is_zero_for_the_held_out_clips_themselves_and_not_for_others(tiny_run, synth_dir):
    """A random-init I3D: 8 clips through it, about 6 s on this CPU."""
    import torch

    from expert.i3d import I3DFeatures, InceptionI3d

    spec, _ = tiny_run
    held = heldout_clips(spec, synth_dir)[0]
    ref = held.frames[:2]
    torch.manual_seed(0)
    i3d = I3DFeatures(InceptionI3d())
    pair = (ref, held.captions[:2])
    perfect = Target("expert_0", "expert", lambda p, s: ref[: len(p)], held.captions[:2], ref, pair)
    row = score(perfect, fvd_net=i3d)
    assert row["videos"] == 2 and row["heldout_clips"] == 2
    wrong = Target("expert_0", "expert", lambda p, s: np.ascontiguousarray(ref[: len(p), ..., ::-1]),
                   held.captions[:2], ref, pair)
    bad = score(wrong, fvd_net=i3d)["fvd"]
    assert abs(row["fvd"]) < 1e-6 < bad


@pytest.mark.slow
def test_an_ensemble_is_measured_per_expert_and_per_strategy(tiny_run, synth_dir, tmp_path, capsys):
    """Two experts and a router trained one step, assembled; a random-init open_clip scores them. Over 10 s on
    a loaded machine (~27 s at load 10 on 2 cores): building the CLIP tower alone takes 2-8 s, and this is the
    one test of the whole path the CLI runs (ensemble, both strategies, a prompts file)."""
    from expert.clip_score import ClipScorer
    from node.cli_eval import evaluate_own_run
    from tests.ensembles import tiny_ensemble

    spec, _ = tiny_run
    folder, _ = tiny_ensemble(spec, tmp_path, steps=1, cap=16)
    (tmp_path / "prompts.txt").write_text("a red circle moving left\na blue square on a dark background\n")
    report = evaluate_own_run(spec, ensemble=folder, checkpoint=None, data=synth_dir, prompts_file=None,
                              strategies=["top1", "full"], router_mode=None, n=2, steps=2, guidance=2.0,
                              device="cpu", fvd_net=None, clip=ClipScorer.random_init("ViT-S-32"), json_out=False)
    rows = report["rows"]
    assert list(rows) == ["expert_0", "expert_1", "top1", "full"]
    assert all(r["videos"] == 2 and -1 <= r["clip_score"] <= 1 and -1 <= r["clip_score_heldout"] <= 1
               for r in rows.values())
    assert rows["expert_0"]["val_loss"] > 0 and rows["expert_0"]["kind"] == "expert" and "val_loss" not in rows["full"]
    assert rows["full"]["heldout_clips"] == sum(len(h) for h in spec.validation.holdout)
    shown = capsys.readouterr().out
    assert "expert_1" in shown and "full" in shown and "clip_score" in shown
    again = evaluate_own_run(spec, ensemble=folder, checkpoint=None, data=synth_dir,
                             prompts_file=tmp_path / "prompts.txt", strategies=["top2"], router_mode=None, n=8,
                             steps=1, guidance=1.0, device="cpu", fvd_net=None, clip=None, json_out=True)
    assert [r["videos"] for r in again["rows"].values()] == [2, 2, 2] and "clip_score" not in again["rows"]["top2"]
    assert again["prompts"].endswith("prompts.txt")
