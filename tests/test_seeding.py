"""Seeded builds are the same whatever another thread builds meanwhile (expert.seeding). A daemon's checker
builds models beside its trainer; before the lock, the trainer's random text tower came out of the interleaved
draws, and an honest trainer's checkpoints failed every verifier's validation-loss check (seen in the two
`auto` nodes' e2e run: three honest checkpoints of one cluster rejected, the cluster trained again)."""

from __future__ import annotations

import threading

import torch

from expert.backbone import build_backbone
from expert.presets import get_preset
from expert.router import CaptionPrior
from expert.text import TextEncoder


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_seeded_build_is_the_same_while_another_thread_builds():
    preset = get_preset("tiny")
    text = TextEncoder(preset.text)
    reference = [_state(text), _state(build_backbone(preset.backbone, text.width, seed=3)),
                 _state(CaptionPrior(text.width, 4, seed=5))]
    stop, other_builds = threading.Event(), [0]

    def checker() -> None:  # what a checker does beside the trainer: builds models from other seeds
        while not stop.is_set():
            build_backbone(preset.backbone, text.width, seed=100 + other_builds[0])
            other_builds[0] += 1

    thread = threading.Thread(target=checker)
    thread.start()
    try:
        rounds = [[_state(TextEncoder(preset.text)), _state(build_backbone(preset.backbone, text.width, seed=3)),
                   _state(CaptionPrior(text.width, 4, seed=5))] for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert other_builds[0] > 0
    for built in rounds:
        assert [_same(b, r) for b, r in zip(built, reference, strict=True)] == [True, True, True]


def test_a_seeded_build_leaves_the_callers_rng_as_it_was():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_backbone(get_preset("tiny").backbone, 64, seed=1)
    assert torch.equal(torch.rand(3), expected)
