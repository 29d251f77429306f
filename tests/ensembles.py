"""A tiny ensemble on disk for the pipeline tests: two experts and a router of the tiny run, assembled."""

from __future__ import annotations

from pathlib import Path

from expert.pipeline import assemble
from expert.train_expert import trainer_for_run
from expert.train_router import router_trainer_for_run


def tiny_ensemble(spec, root: Path, *, steps: int, cap: int):
    """Train both experts and the router `steps` steps into `root` and assemble `root/ensemble`. Returns the
    folder and the router trainer (for tests that look at it too)."""
    for k in range(2):
        trainer_for_run(spec, k).train(steps, checkpoint_dir=root / f"expert{k}")
    router = router_trainer_for_run(spec, cap=cap)
    router.train(steps, checkpoint_dir=root / "router")
    assemble([root / "expert0", root / "expert1"], root / "router", root / "ensemble")
    return root / "ensemble", router
