"""Typer options that both command modules (node.cli and node.cli_swarm) take."""

from __future__ import annotations

from typing import Annotated

import typer

from expert.presets import DEMO_STEPS  # noqa: F401  (the default of --steps and --target-steps)


def _router_mode(value: str | None) -> str | None:
    from protocol.model import ROUTER_MODES

    if value is not None and value not in ROUTER_MODES:
        raise typer.BadParameter(f"{value!r}: choose one of {', '.join(ROUTER_MODES)}")
    return value


RouterModeOpt = Annotated[str | None, typer.Option(
    "--router-mode", callback=_router_mode,
    help="How the router picks experts: xt (Paris: the noisy video), joint (DDM: video and caption), caption "
         "(the caption alone) or combined (p(k|x_t)·p(k|c)/p(k)); default: the mode the ensemble folder records "
         "(fetch and assemble record the router's own: joint for a run's router).")]


def _checkpointing(value: str) -> str:
    if value not in ("auto", "on", "off"):
        raise typer.BadParameter(f"{value!r}: choose auto, on or off")
    return value


CompileOpt = Annotated[bool, typer.Option(
    "--compile/--no-compile", help="torch.compile the model (a GPU trains faster after minutes of warm-up).")]
CheckpointingOpt = Annotated[str, typer.Option(
    "--grad-checkpointing", callback=_checkpointing,
    help="Recompute activations in the backward pass to fit a bigger model or batch: auto (on after a step "
         "runs out of device memory, which is then retried), on, off.")]
