"""Routing modes (xt, joint, caption, combined), the caption prior, the light router and the router's
t distribution: the combination rule against exact Bayes, the modes' contracts, the FLOP bound, training and
the ensemble folder round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from expert.backbone import build_backbone, build_codec
from expert.flow import sample_train_t
from expert.presets import get_preset
from expert.router import Router
from expert.router_preset import light_backbone, router_preset, run_router_preset
from expert.routing import combine_posteriors
from expert.train_router import router_trainer_for_run
from expert.validation import REPORT_LEVELS, expected_calibration_error, router_report, router_validation
from protocol.errors import ParisError
from protocol.model import RouterHead


def _bayes(p_k, p_c_k, p_x_k):
    """Exact posteriors of a discrete model with x ⟂ c | k: p(k|x), p(k|c), p(k|x,c) for every (x, c)."""
    joint = p_k[:, None, None] * p_c_k[:, :, None] * p_x_k[:, None, :]  # k, c, x
    post_xc = joint / joint.sum(0, keepdims=True)
    pk_x = (p_k[:, None] * p_x_k) / (p_k[:, None] * p_x_k).sum(0, keepdims=True)  # k, x
    pk_c = (p_k[:, None] * p_c_k) / (p_k[:, None] * p_c_k).sum(0, keepdims=True)  # k, c
    return pk_x, pk_c, post_xc


def test_combined_posterior_is_exact_bayes_when_video_and_caption_are_independent_given_the_cluster():
    rng = np.random.default_rng(0)
    k, nc, nx = 4, 5, 7
    p_k = rng.dirichlet(np.ones(k))
    p_c_k, p_x_k = rng.dirichlet(np.ones(nc), size=k), rng.dirichlet(np.ones(nx), size=k)
    pk_x, pk_c, exact = _bayes(p_k, p_c_k, p_x_k)
    for c in range(nc):
        for x in range(nx):
            got = combine_posteriors(torch.tensor(pk_x[:, x])[None], torch.tensor(pk_c[:, c])[None],
                                     torch.tensor(p_k))[0]
            assert torch.allclose(got.double(), torch.tensor(exact[:, c, x]), atol=1e-5)
    # pure noise (p(k|x) = p(k)): the caption decides; a caption that says nothing (p(k|c) = p(k)): x decides
    pk = torch.tensor(p_k)[None]
    assert torch.allclose(combine_posteriors(pk, torch.tensor(pk_c[:, 0])[None], pk[0]).double(),
                          torch.tensor(pk_c[:, 0])[None], atol=1e-6)
    assert torch.allclose(combine_posteriors(torch.tensor(pk_x[:, 0])[None], pk, pk[0]).double(),
                          torch.tensor(pk_x[:, 0])[None], atol=1e-6)


def test_combined_posterior_is_over_confident_when_the_caption_describes_the_video():
    """x a copy of c (the caption's words are what the image shows): evidence counted twice."""
    p_k = np.array([0.5, 0.5])
    p_c_k = np.array([[0.8, 0.2], [0.2, 0.8]])
    true = p_k * p_c_k[:, 0] / (p_k * p_c_k[:, 0]).sum()  # seeing x = c adds nothing: posterior 0.8
    got = combine_posteriors(torch.tensor(true)[None], torch.tensor(true)[None], torch.tensor(p_k))[0]
    assert got[0] > true[0] + 0.1  # 0.94 instead of 0.8
    probs = torch.tensor([[0.94, 0.06]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.14, abs=1e-4)


def test_router_head_modes_and_their_requirements():
    paris = RouterHead(num_experts=3)
    assert paris.modes == ("xt",) and paris.default_mode == "xt"
    ddm = RouterHead(num_experts=3, use_text=True)
    assert ddm.modes == ("xt", "joint") and ddm.default_mode == "joint"
    full = RouterHead(num_experts=3, use_text=True, caption_prior=True, cluster_prior=(0.5, 0.3, 0.2))
    assert full.modes == ("xt", "joint", "combined", "caption") and full.default_mode == "joint"
    assert RouterHead(num_experts=3, caption_prior=True).modes == ("xt", "caption")  # no p(k): no combined
    with pytest.raises(ValueError, match="needs what this router lacks"):
        RouterHead(num_experts=3, mode="joint")
    with pytest.raises(ValueError, match="cluster_prior"):
        RouterHead(num_experts=3, caption_prior=True, cluster_prior=(0.5, 0.5))
    with pytest.raises(ValueError, match="cluster_prior"):
        RouterHead(num_experts=2, caption_prior=True, cluster_prior=(0.9, 0.3))


def _router(head: RouterHead, seed: int = 0) -> Router:
    preset = get_preset("tiny")
    router = Router(light_backbone(preset.backbone), head, preset.text.width, seed=seed).eval()
    with torch.no_grad():  # make the caption prior's output depend visibly on the caption
        for p in router.prior.parameters() if router.prior is not None else ():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return router


@torch.no_grad()
def test_each_mode_reads_what_it_says():
    head = RouterHead(num_experts=3, use_text=True, caption_prior=True, cluster_prior=(0.5, 0.3, 0.2))
    router = _router(head)
    shape = build_codec(get_preset("tiny").backbone).latent_shape()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, *shape, generator=g), torch.randn(2, *shape, generator=g)
    c1, c2 = torch.randn(2, 32, 64, generator=g), torch.randn(2, 32, 64, generator=g)
    null = torch.zeros(2, 32, 64)
    null[:, :2] = 1.0  # a null caption has real tokens too (start and end)
    t = torch.full((2,), 500.0)
    post = router.posterior
    assert torch.allclose(post(x1, t, c1, null, "xt"), post(x1, t, c2, null, "xt"))  # caption ignored
    assert torch.allclose(post(x1, t, c1, null, "caption"), post(x2, t, c1, null, "caption"))  # video ignored
    assert not torch.allclose(router.caption_logits(c1), router.caption_logits(c2))
    expected = combine_posteriors(post(x1, t, c1, null, "xt"), post(x1, t, c1, null, "caption"),
                                  torch.tensor([0.5, 0.3, 0.2]))
    assert torch.allclose(post(x1, t, c1, null, "combined"), expected, atol=1e-6)
    assert torch.allclose(post(x1, t, c1, null), post(x1, t, c1, null, "joint"))  # the head's default
    for mode in ("xt", "joint", "caption", "combined"):
        p = post(x1, t, c1, null, mode)
        assert p.shape == (2, 3) and torch.allclose(p.sum(1), torch.ones(2))
    paris = _router(RouterHead(num_experts=3))
    with pytest.raises(ParisError, match="offers xt"):
        paris.posterior(x1, t, c1, null, "combined")
    # a partial ensemble keeps outputs 2 and 0: every mode renormalises over them, p(k) included
    kept = Router.from_trunk(router.trunk, head.model_copy(update={"keep": (2, 0)}), 64, router.prior)
    assert torch.allclose(kept.cluster_prior(), torch.tensor([0.2, 0.5]) / 0.7)
    full_c = post(x1, t, c1, null, "combined")
    part = kept.posterior(x1, t, c1, null, "combined")
    assert torch.allclose(part, full_c[:, [2, 0]] / full_c[:, [2, 0]].sum(1, keepdim=True), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_light_router_costs_under_a_tenth_of_an_expert_forward(name):
    preset = get_preset(name)
    width = preset.text.width
    expert = build_backbone(preset.backbone, width).eval()
    rp = run_router_preset_for(preset)
    router = Router(rp.backbone, rp.router, width).eval()
    x = torch.randn(1, *build_codec(preset.backbone).latent_shape())
    t, cond = torch.tensor([500.0]), torch.randn(1, 32, width)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    one_expert = flops(lambda: expert(x, t, cond, return_dict=False))
    for mode in rp.router.modes:
        assert flops(lambda m=mode: router.posterior(x, t, cond, torch.zeros_like(cond), m)) <= 0.1 * one_expert
    full = router_preset(preset, 3, use_text=False, light=False, caption_prior=False, uniform_t=False)
    assert full.backbone == preset.backbone and full.train == preset.train  # Paris' router, unchanged


def run_router_preset_for(preset):
    return router_preset(preset, 3, data_sizes=[50, 30, 20])


def test_router_training_t_covers_the_decision_near_pure_noise():
    g = torch.Generator().manual_seed(0)
    logit = sample_train_t(20000, g, mean=1.0)
    assert torch.equal(sample_train_t(5, torch.Generator().manual_seed(3), mean=1.0),
                       torch.sigmoid(1.0 + torch.randn(5, generator=torch.Generator().manual_seed(3))))
    flat = sample_train_t(20000, torch.Generator().manual_seed(0), mean=1.0, uniform=1.0)
    assert float((logit > 0.95).float().mean()) < 0.035
    assert float((flat > 0.95).float().mean()) == pytest.approx(0.05, abs=0.01)
    rp = run_router_preset_for(get_preset("tiny"))
    assert rp.train.t_uniform == 1.0 and rp.train.cond_dropout == 0.5
    assert rp.router.cluster_prior == (0.5, 0.3, 0.2)


def test_the_run_router_learns_the_caption_prior_and_reports_every_mode_and_level(tiny_run, synth_dir):
    spec, _ = tiny_run
    trainer = router_trainer_for_run(spec, data_dir=synth_dir, cap=64)
    assert trainer.preset == run_router_preset(spec)
    before = router_validation(trainer.ema, trainer.held)
    trainer.train(60)
    after = router_validation(trainer.ema, trainer.held)
    assert set(after) >= {"loss", "caption_prior", "per_noise_level", "per_noise_level_null_caption"}
    assert after["loss"] < before["loss"]
    assert after["caption_prior"]["cross_entropy"] < before["caption_prior"]["cross_entropy"]
    assert trainer.validation_loss() == pytest.approx(after["loss"], rel=1e-9)
    report = router_report(trainer.ema, trainer.held, levels=REPORT_LEVELS)
    assert set(report["modes"]) == {"xt", "joint", "caption", "combined"}
    for levels in report["modes"].values():
        assert set(levels) == {f"t={t:g}" for t in REPORT_LEVELS}
        for v in levels.values():
            assert 0 <= v["accuracy"] <= 1 and v["nll"] > 0 and 0 <= v["ece"] <= 1
    caption = report["modes"]["caption"]
    assert len({v["accuracy"] for v in caption.values()}) == 1  # the caption prior does not see x_t


def test_ensemble_folder_records_and_serves_the_router_mode(tiny_run, synth_dir, tmp_path):
    from expert.pipeline import ParisPipeline, assemble
    from expert.train_expert import trainer_for_run

    spec, _ = tiny_run
    experts = []
    for k in range(spec.num_clusters):
        t = trainer_for_run(spec, k, data_dir=synth_dir)
        t.train(1, checkpoint_dir=tmp_path / f"e{k}")
        experts.append(tmp_path / f"e{k}")
    r = router_trainer_for_run(spec, data_dir=synth_dir, cap=16)
    r.train(2, checkpoint_dir=tmp_path / "r")
    out = assemble(experts, tmp_path / "r", tmp_path / "ens", router_mode="caption")
    pipe = ParisPipeline.from_pretrained(out)
    assert pipe.router_mode == "caption" and pipe.router.prior is not None
    assert ParisPipeline.from_pretrained(out, router_mode="xt").router_mode == "xt"
    with torch.no_grad():
        for name, p in r.ema.prior.state_dict().items():
            assert torch.equal(pipe.router.prior.state_dict()[name], p)
    videos, record = pipe("a red circle moving left on a blue background", num_inference_steps=2,
                          record_routing=True, router_mode="combined", return_dict=False)
    assert videos.shape[0] == 1 and {s["router_mode"] for s in record} == {"combined"}
    caption_only = pipe("a red circle moving left on a blue background", num_inference_steps=2,
                        record_routing=True).routing
    assert caption_only[0]["posterior"] == caption_only[1]["posterior"]  # the caption alone: same every step
    with pytest.raises(ParisError, match="not available"):
        ParisPipeline.from_pretrained(assemble(experts, tmp_path / "r", tmp_path / "ens2"), router_mode="nope")


def test_fetch_refuses_a_router_mode_the_run_does_not_offer_before_any_download(tiny_run, tmp_path):
    import asyncio
    from types import SimpleNamespace

    from node.fetch import fetch_ensemble

    spec, _ = tiny_run
    with pytest.raises(ParisError, match="its router offers xt, joint, combined, caption"):  # no node, no store
        asyncio.run(fetch_ensemble(None, None, SimpleNamespace(spec=spec), tmp_path / "out", router_mode="bogus"))
    assert not (tmp_path / "out").exists()
