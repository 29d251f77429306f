"""The run's router, as pure rules over the run spec: its preset (the light trunk, caption dropout, the
clusters' priors), its stratified training sample and its held-out clips.

Verifiers, `fetch` and the bundle's size bounds need the router's preset without training anything, so this
module imports numpy and the protocol only, never torch (tests/test_train_split.py checks it)."""

from __future__ import annotations

import numpy as np

from protocol.model import BackboneConfig, ExpertPreset


def stratified_sample(assignments: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """At most `cap` clip indices per cluster, chosen at random with `seed`, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k in np.unique(assignments):
        members = np.flatnonzero(assignments == k)
        chosen.append(members if len(members) <= cap else rng.choice(members, cap, replace=False))
    return np.sort(np.concatenate(chosen))


def light_backbone(cfg: BackboneConfig) -> BackboneConfig:
    """The light router's trunk: the experts' backbone with patches twice as large in height and width
    (a quarter of the tokens: pooled, since the router needs the video's gist, not its detail), half the
    heads and feed-forward width, and at most two blocks. Counted by torch's flop counter, that is 4.2 % (tiny)
    and 4.5 % (small) of one expert forward, half that of a guided sampling step (benchmarks/sampling_cost.py
    prints the ratio; tests/test_router_modes.py holds it under 10 %)."""
    pt, ph, pw = cfg.patch_size
    # a patch that does not tile the frame drops the last row of pixels (Wan patches with a strided conv);
    # the router pools over the video, so that only matters for pixel frames, which tile exactly here
    ph2 = ph if cfg.space == "pixel" and cfg.height % (2 * ph) else 2 * ph
    pw2 = pw if cfg.space == "pixel" and cfg.width % (2 * pw) else 2 * pw
    return cfg.model_copy(update={"patch_size": (pt, ph2, pw2), "num_layers": min(2, cfg.num_layers), "init_from": None,
                                  "num_heads": max(1, cfg.num_heads // 2), "ffn_dim": max(8, cfg.ffn_dim // 2)})


ROUTER_CAPTION_DROPOUT = 0.5  # a caption-reading trunk learns p(k | x_t) on the null caption half the time


def router_preset(expert: ExpertPreset, num_experts: int, *, use_text: bool = True, light: bool = True,
                  caption_prior: bool = True, data_sizes=None, uniform_t: bool = True) -> ExpertPreset:
    """The run's router: the experts' backbone (or its light form) and text tower with a K-way pooled head.

    The defaults are what a run trains: a light, caption-reading trunk with caption dropout 0.5 (it serves
    the `xt` and `joint` modes), a caption prior beside it with the clusters' shares of the data (`caption`
    and `combined`), and t drawn uniformly (TrainConfig.t_uniform). `use_text=False, light=False,
    caption_prior=False, uniform_t=False` is the full-size x_t router of Paris, as it was trained before."""
    from protocol.model import RouterHead

    shares = None
    if data_sizes is not None and caption_prior:
        sizes = np.maximum(np.asarray(data_sizes, dtype=np.float64), 0)
        shares = tuple(round(max(float(v), 1e-6), 6) for v in sizes / max(sizes.sum(), 1))
    train = expert.train
    updates = {}
    if use_text:
        updates["cond_dropout"] = ROUTER_CAPTION_DROPOUT
    if uniform_t:
        updates["t_uniform"] = 1.0
    head = RouterHead(num_experts=num_experts, use_text=use_text, caption_prior=caption_prior or None,
                      cluster_prior=shares)
    return expert.model_copy(update={
        "name": f"{expert.name}-router" + ("-light" if light else ""),
        "backbone": light_backbone(expert.backbone) if light else expert.backbone,
        "train": train.model_copy(update=updates) if updates else train,
        "router": head})


def run_router_preset(spec) -> ExpertPreset:
    """The router preset of run `spec` (a protocol.run.RunSpec): what its router role trains, its verifiers
    rebuild and its store's size bound is computed from."""
    return router_preset(spec.preset, spec.num_clusters,
                         data_sizes=np.bincount(np.asarray(spec.assignments), minlength=spec.num_clusters))


def router_holdout(spec) -> list[int]:
    """Every cluster's held-out clips (global indices), cluster by cluster: the router's validation set."""
    return [i for k in range(spec.num_clusters) for i in spec.holdout_clips(k)]
