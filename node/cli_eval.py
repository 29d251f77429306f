"""`paris-node eval --run RUN`: a researcher's own run measured on its held-out clips (expert.evaluate_run),
per expert and per routing strategy, printed as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from node.console import out, progress
from protocol.errors import ParisError


def evaluate_own_run(spec, *, ensemble: Path | None, checkpoint: Path | None, data: Path | None,
                     prompts_file: Path | None, strategies: list[str], router_mode: str | None, n: int, steps: int,
                     guidance: float, device, fvd_net, clip, json_out: bool) -> dict:
    """Build the samplers (each expert, each strategy), score them and print the report; returns it."""
    from expert.evaluate_run import expert_loss, heldout_clips, read_prompts, score, targets_for
    from expert.routing import parse_strategy
    from expert.sampling import sample_network

    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    held = heldout_clips(spec, data)
    experts, mixes, extra = {}, {}, {}
    if ensemble is not None:
        from expert.pipeline import ParisPipeline

        pipe = ParisPipeline.from_pretrained(ensemble, router_mode=router_mode).to(device)
        if pipe.preset != spec.preset:
            raise ParisError(f"ensemble {ensemble} was not trained with run {spec.run_id}'s model")
        keep = pipe.router.head.keep or range(len(pipe.experts))
        networks = dict(zip(keep, pipe.experts, strict=True))
        text, codec = pipe.text_encoder, pipe.codec
        for s in strategies:
            strat = parse_strategy(s)
            mixes[s] = (lambda st: lambda p, seed: pipe(p, strategy=st, num_inference_steps=steps,
                                                                 guidance_scale=guidance, seed=seed,
                                                                 output_type="uint8").frames)(strat)
    else:
        from expert.sampling import load_expert

        loaded = load_expert(checkpoint, device)
        if loaded.meta.run_id != spec.run_id or loaded.meta.cluster is None:
            raise ParisError(f"checkpoint {checkpoint} belongs to run {loaded.meta.run_id or '(none)'}, "
                             f"not {spec.run_id}")
        networks, text, codec = {loaded.meta.cluster: loaded.model}, loaded.text, loaded.codec
    for k, net in networks.items():
        experts[k] = (lambda m: lambda p, seed: sample_network(m, text, codec, p, steps=steps, guidance=guidance,
                                                               seed=seed, device=device))(net)
        extra[k] = {"val_loss": expert_loss(net, held[k], spec, k, text, codec, device=device)}
    targets = targets_for(held, experts, mixes, n=n, prompts=prompts, extra=extra)
    rows = {}
    with progress() as bar:
        task = bar.add_task("sampling", total=sum(len(t.prompts) for t in targets))
        for t in targets:
            rows[t.name] = score(t, fvd_net=fvd_net, clip=clip, on_batch=lambda k: bar.advance(task, k))
    report = {"run_id": spec.run_id, "what": str(ensemble or checkpoint),
              "prompts": str(prompts_file) if prompts_file else "held-out captions", "steps": steps,
              "guidance": guidance, "router_mode": pipe.router_mode if ensemble is not None else None,
              "rows": rows}
    if json_out:
        out.print_json(json.dumps(report))
    else:
        print_table(report)
    return report


def print_table(report: dict) -> None:
    from rich.table import Table

    rows = report["rows"]
    columns = [c for c in ("val_loss", "fvd", "clip_score", "clip_score_heldout")
               if any(c in r for r in rows.values())]
    table = Table(title=f"run {report['run_id']}: {report['what']} on {report['prompts']}")
    for c in ("", "videos", "held-out clips", *columns):
        table.add_column(c, justify="left" if not c else "right")
    for name, r in rows.items():
        table.add_row(name, str(r["videos"]), str(r["heldout_clips"]),
                      *("-" if r.get(c) is None else f"{r[c]:.4f}" for c in columns))
    out.print(table)
    if not {"fvd", "clip_score"} & set(columns):
        out.print("(FVD and the CLIP score need their weights: --i3d FILE, --clip-weights FILE)", highlight=False)
