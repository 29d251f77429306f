"""The headline experiment at small scale: K experts trained in isolation on their clusters (plus a router)
against one monolith of the same architecture trained on all of the data, at matched training compute.

What is matched: total training FLOPs = optimizer steps × batch × FLOPs per sample, where FLOPs per sample
are counted by `torch.utils.flop_counter` over one real training step of each network (forward and
backward of the backbone; the frozen text states are precomputed by both sides alike and not counted;
optimizer arithmetic is not counted). The monolith gets `budget_steps` steps. The DDM side gets the same
FLOPs in all: the router first takes `router_share` of the budget, and the rest is split equally over the K
experts (each expert gets the same number of steps, whatever its cluster's size, as in Paris).

Each configuration is evaluated on the same prompts and the same initial noise: the monolith, and the
ensemble with top1 and top2 routing by Paris' router (the experts' own backbone, seeing only x_t and t: the
`paris-xt` rows) and, with `--light-router`, by the router a run trains (`expert.router_preset.run_router_preset`:
light, caption-reading, with a caption prior), in each of its modes `xt`, `joint` (DDM), `caption` and
`combined` (rows named so; it takes the same share of the budget, in steps of its own cost, so each
configuration's compute, router training included, matches the monolith's), by FVD-synth and
prompt-attribute accuracy (`expert.evaluate`,
the offline judge trained on the generator's own clips; see its docstring for what these are). With
`--i3d` / `--clip-weights` (pretrained files on local disk) FVD and CLIP similarity are added. The data and
its clustering are fixed; each seed retrains every network from a different initialisation and batch
order. Numbers are mean ± sample std over seeds, plus the per-seed paired difference to the monolith.

    python benchmarks/ddm_vs_monolith.py --quick                    # tiny preset, 2-core CPU, ~20 min idle
    python benchmarks/ddm_vs_monolith.py --quick --clustering background-colour --results docs/RESULTS-bg-colour.md
    python benchmarks/ddm_vs_monolith.py --scale small              # the CPU demo preset (hours on a CPU)
    python benchmarks/ddm_vs_monolith.py --scale base --vae DIR --gpu 0 [--i3d FILE] [--clip-weights FILE]

It writes docs/RESULTS.md (--results) with the table, the command line, the machine and a summary of what the
numbers show; text below the line `## Notes` in an existing file is kept. `--json` prints everything as JSON.
Finished seeds are saved under --work, so a rerun with the same --work resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from expert.device import resolve_device
from expert.evaluate import evaluate_synthetic
from expert.pipeline import ParisPipeline, assemble
from expert.presets import get_preset
from expert.router_preset import router_preset, run_router_preset
from expert.run_init import init_run
from expert.sampling import load_expert, sample_prompts
from expert.synth_classifier import SynthJudge, cached_judge
from expert.synth_dataset import write_synthetic
from expert.train_expert import ExpertTrainer, trainer_for_run
from expert.train_inputs import run_clips
from expert.train_loop import Trainer
from expert.train_router import router_trainer_for_run
from expert.validation import router_report
from protocol.errors import ParisError
from protocol.model import ExpertPreset
from protocol.run import RunSpec, ValidationSpec, choose_holdout

STRATEGIES = ("top1", "top2")
PARIS = "paris-xt"  # the configurations routed by Paris' full-size x_t router
LIGHT_MODES = ("xt", "joint", "caption", "combined")  # the run's (light) router, in each of its modes
CLUSTERINGS = {"embedding": ("background",), "background-colour": ("background", "colour")}
WARM = ("red", "yellow", "magenta")  # background-colour clustering: 3 backgrounds × warm / cool colour
NOTES = "## Notes"


class Scale(BaseModel):
    """One named experiment size; every field can be overridden on the command line."""

    model_config = ConfigDict(extra="forbid")

    preset: str
    clips: int = Field(ge=16)
    clusters: int = Field(ge=2)
    budget_steps: int = Field(ge=1, description="monolith optimizer steps; the DDM side gets the same FLOPs")
    router_share: float = Field(gt=0, lt=1)
    seeds: int = Field(ge=1)
    n: int = Field(ge=2, description="prompts / generated videos per evaluation")
    sample_steps: int = Field(ge=1)
    guidance: float = 4.0
    eval_batch: int = Field(ge=1)
    light_router: bool = Field(default=True, description="also train the run's light router (same share) and "
                                                          "evaluate each of its routing modes")
    clustering: str = Field(default="embedding", description="embedding (run init's) or background-colour "
                                                             "(6 clusters: background × warm/cool colour)")

    @model_validator(mode="after")
    def _check_clustering(self) -> Scale:
        if self.clustering not in CLUSTERINGS:
            raise ValueError(f"clustering must be one of {', '.join(CLUSTERINGS)}")
        return self


SCALES: dict[str, Scale] = {
    "quick": Scale(preset="tiny", clips=1200, clusters=3, budget_steps=480, router_share=0.15, seeds=3, n=40,
                   sample_steps=16, eval_batch=20),
    "small": Scale(preset="small", clips=3000, clusters=3, budget_steps=4000, router_share=0.1, seeds=3, n=128,
                   sample_steps=30, eval_batch=16),
    # base: 2000 clips of 33×256×256 are 13 GB of uint8 in memory; not run on this project's CPU machines
    "base": Scale(preset="base", clips=2000, clusters=4, budget_steps=10_000, router_share=0.1, seeds=3, n=256,
                  sample_steps=30, eval_batch=16),
}


class Budget(BaseModel):
    """How the compute is split, with the FLOPs that justify it."""

    batch: int
    flops_per_sample_expert: float
    flops_per_sample_router: float
    monolith_steps: int
    router_steps: int
    expert_steps: int
    clusters: int
    monolith_flops: float
    ddm_flops: float
    flops_per_sample_light_router: float | None = None
    light_router_steps: int | None = None
    ddm_light_flops: float | None = None


def paris_router(spec: RunSpec) -> ExpertPreset:
    """Paris' router: the experts' backbone, x_t and t only, the experts' t distribution."""
    return router_preset(spec.preset, spec.num_clusters, use_text=False, light=False, caption_prior=False,
                         uniform_t=False)


def flops_per_sample(trainer: Trainer) -> float:
    """Counted over one real optimizer step of a throwaway trainer (its state is discarded)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    tc = trainer.preset.train
    return counter.get_total_flops() / (tc.batch_size * tc.grad_accum)


def plan_budget(spec: RunSpec, scale: Scale) -> Budget:
    expert = ExpertTrainer(spec.preset, run_clips(spec).select(range(min(64, len(spec.assignments)))))
    f_e = flops_per_sample(expert)
    router = router_trainer_for_run(spec, cap=32, preset=paris_router(spec))
    f_r = flops_per_sample(router)
    batch = spec.preset.train.batch_size * spec.preset.train.grad_accum
    total = scale.budget_steps * batch * f_e
    router_steps = max(1, round(scale.router_share * total / (batch * f_r)))
    expert_steps = math.floor((total - router_steps * batch * f_r) / (scale.clusters * batch * f_e))
    if expert_steps < 1:
        raise SystemExit("the budget does not leave one step per expert after the router: raise --budget-steps")
    ddm = router_steps * batch * f_r + scale.clusters * expert_steps * batch * f_e
    budget = Budget(batch=batch, flops_per_sample_expert=f_e, flops_per_sample_router=f_r,
                    monolith_steps=scale.budget_steps, router_steps=router_steps, expert_steps=expert_steps,
                    clusters=scale.clusters, monolith_flops=total, ddm_flops=ddm)
    if scale.light_router:  # the same share of the budget, in steps of its own (much smaller) cost
        f_t = flops_per_sample(router_trainer_for_run(spec, cap=32))
        steps = max(1, round(scale.router_share * total / (batch * f_t)))
        budget = budget.model_copy(update={"flops_per_sample_light_router": f_t, "light_router_steps": steps,
                                           "ddm_light_flops": steps * batch * f_t
                                           + scale.clusters * expert_steps * batch * f_e})
    return budget


def cluster_by_background_and_colour(spec: RunSpec, data: Path) -> RunSpec:
    """The run re-clustered into 6 by the generator's labels: background × (warm or cool colour of the first
    object), so that routing must read two words of the caption, or two properties of the video. Centroids
    are the clusters' means in the run's standardised embedding (they are not used to assign new clips here)."""
    from expert.embed import embed_shapes_v1
    from expert.shards import load_dataset
    from expert.synth import BACKGROUNDS, COLOURS

    manifest, clips = load_dataset(data)
    names = [a.name for a in manifest.attributes]
    bg, colour = clips.attributes[:, names.index("background")], clips.attributes[:, names.index("colour")]
    warm = np.isin(colour, [COLOURS.index(c) for c in WARM])
    labels = (bg * 2 + warm).astype(np.int64)
    k = 2 * len(BACKGROUNDS)
    emb = (embed_shapes_v1(clips.frames, clips.captions) - np.asarray(spec.embedding.mean)) \
        / np.asarray(spec.embedding.scale)
    centroids = tuple(tuple(round(float(v), 6) for v in emb[labels == c].mean(0)) for c in range(k))
    assignments = tuple(int(v) for v in labels)
    validation = ValidationSpec(holdout=choose_holdout(assignments, k, seed=spec.seed), noise_seed=spec.seed)
    return RunSpec.model_validate({**spec.model_dump(), "num_clusters": k, "assignments": assignments,
                                   "centroids": centroids, "validation": validation.model_dump(),
                                   "name": f"{spec.name}-background-colour"})


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def run_seed(spec: RunSpec, budget: Budget, scale: Scale, seed: int, work: Path, judge: SynthJudge,
             device: torch.device, fvd_net=None, clip=None) -> dict:
    """Train the monolith, the K experts and the router(s) from `seed`, then evaluate every configuration."""
    never = 10**9  # one checkpoint at the end of training, none in between
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mono = ExpertTrainer(spec.preset, run_clips(spec), device=device, seed=seed, run_id=spec.run_id)
    mono.train(budget.monolith_steps, checkpoint_dir=work / "monolith", checkpoint_every=never)
    timings["train_monolith_s"] = time.perf_counter() - t0
    log(f"seed {seed}: monolith {budget.monolith_steps} steps in {timings['train_monolith_s']:.0f} s")
    t0 = time.perf_counter()
    for k in range(spec.num_clusters):
        trainer_for_run(spec, k, device=device, seed=seed).train(
            budget.expert_steps, checkpoint_dir=work / f"expert_{k}", checkpoint_every=never)
    routers = {PARIS: (paris_router(spec), budget.router_steps)}
    if budget.light_router_steps:
        routers["light"] = (run_router_preset(spec), budget.light_router_steps)
    router_eval, pipes = {}, {}
    for name, (preset, steps) in routers.items():
        rt = router_trainer_for_run(spec, device=device, seed=seed, preset=preset)
        rt.train(steps, checkpoint_dir=work / f"router-{name}", checkpoint_every=never)
        router_eval[name] = router_report(rt.ema, rt.held, device=device)
        assemble([work / f"expert_{k}" for k in range(spec.num_clusters)], work / f"router-{name}",
                 work / f"ensemble-{name}")
        pipes[name] = ParisPipeline.from_pretrained(work / f"ensemble-{name}").to(device)
    timings["train_ddm_s"] = time.perf_counter() - t0
    log(f"seed {seed}: {spec.num_clusters} experts × {budget.expert_steps} steps + routers "
        + ", ".join(f"{k} {steps} steps" for k, (_, steps) in routers.items())
        + f" in {timings['train_ddm_s']:.0f} s")
    rows = {f"{s} {PARIS}": (PARIS, "xt", s) for s in STRATEGIES}
    if "light" in routers:
        rows.update({f"{s} {m}": ("light", m, s) for m in LIGHT_MODES for s in STRATEGIES})
    single = load_expert(work / "monolith", device)
    results: dict[str, dict] = {}
    for name in ["monolith", *rows]:
        if name == "monolith":
            def sample(prompts: list[str], s: int) -> np.ndarray:
                return sample_prompts(single, prompts, steps=scale.sample_steps, guidance=scale.guidance, seed=s,
                                      device=device)
        else:
            def sample(prompts: list[str], s: int, config: tuple = rows[name]) -> np.ndarray:
                router, mode, strategy = config
                return pipes[router](prompts, strategy=strategy, router_mode=mode,
                                     num_inference_steps=scale.sample_steps, guidance_scale=scale.guidance,
                                     seed=s, output_type="uint8").frames
        t0 = time.perf_counter()
        results[name] = evaluate_synthetic(sample, judge, n=scale.n, batch=scale.eval_batch, fvd_net=fvd_net,
                                           clip=clip)
        results[name]["sample_s"] = round(time.perf_counter() - t0, 2)
        log(f"seed {seed}: {name:8} FVD-synth {results[name]['fvd_synth']:.3f}  attribute accuracy "
            f"{results[name]['mean_attribute_accuracy']:.3f}  ({results[name]['sample_s']:.0f} s)")
    return {"seed": seed, "router": router_eval, "timings": {k: round(v, 1) for k, v in timings.items()},
            "configs": results}


def configs(seeds: list[dict]) -> list[str]:
    return list(seeds[0]["configs"])


def metric_names(seeds: list[dict]) -> list[str]:
    first = seeds[0]["configs"]["monolith"]
    return [m for m in ("fvd_synth", "mean_attribute_accuracy", "fvd", "clip_similarity") if m in first]


def summarise(seeds: list[dict]) -> dict:
    """Per configuration and metric: mean and sample std over seeds, and the paired difference to the monolith."""
    out: dict[str, dict] = {}
    for name in configs(seeds):
        row: dict[str, dict] = {}
        for m in metric_names(seeds) + [f"attr:{a}" for a in seeds[0]["configs"][name]["attribute_accuracy"]]:
            def get(r: dict, cfg: str, metric: str = m) -> float:
                c = r["configs"][cfg]
                return c["attribute_accuracy"][metric[5:]] if metric.startswith("attr:") else c[metric]

            vals = np.array([get(r, name) for r in seeds], dtype=np.float64)
            diff = vals - np.array([get(r, "monolith") for r in seeds], dtype=np.float64)
            row[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                      "diff_mean": float(diff.mean()),
                      "diff_std": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                      "values": [round(float(v), 4) for v in vals]}
        out[name] = row
    return out


def router_table(report: dict) -> list[str]:
    """Accuracy and expected calibration error of every router mode per noise level, mean over seeds."""
    levels = report["seeds"][0]["router"][PARIS]["levels"]
    lines = ["| router, mode | " + " | ".join(f"t={t:g}" for t in levels) + " | ECE at t=0.5 / 1 |",
             "|---|" + "---|" * (len(levels) + 1)]
    for router in report["seeds"][0]["router"]:
        for mode in report["seeds"][0]["router"][router]["modes"]:
            def mean(t: float, key: str, r: str = router, m: str = mode) -> float:
                return float(np.mean([s["router"][r]["modes"][m][f"t={t:g}"][key] for s in report["seeds"]]))

            lines.append(f"| {router}, {mode} | " + " | ".join(f"{mean(t, 'accuracy'):.2f}" for t in levels)
                         + f" | {mean(0.5, 'ece'):.3f} / {mean(1.0, 'ece'):.3f} |")
    return lines


def verdicts(summary: dict, seeds: int, clustered: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Plain statements of what the numbers show. A paired difference (same seed) counts only when a two-sided
    paired t-test over seeds rejects "no difference" at 5 %; with one seed nothing is claimed. `clustered`:
    the attributes the clustering splits by, each judged on its own (routing must get those right)."""
    from scipy import stats

    lines = []
    better_low = {"fvd_synth": True, "fvd": True, "mean_attribute_accuracy": False, "clip_similarity": False,
                  **{f"attr:{a}": False for a in clustered}}
    label = {"fvd_synth": "FVD-synth", "fvd": "FVD (I3D)", "mean_attribute_accuracy": "attribute accuracy",
             "clip_similarity": "CLIP similarity", **{f"attr:{a}": f"{a} accuracy" for a in clustered}}
    mono_fvd = summary["monolith"]["fvd_synth"]["mean"]
    for name in list(summary)[1:]:
        lines.append(f"- FVD-synth ratio {name} / monolith: {summary[name]['fvd_synth']['mean'] / mono_fvd:.2f} "
                     "(target for the best configuration ≤ 0.6; Paris 2.0 reports 0.50).")
    crit = float(stats.t.ppf(0.975, seeds - 1)) if seeds > 1 else math.inf
    for metric, low in better_low.items():
        if metric not in summary["monolith"]:
            continue
        mono = summary["monolith"][metric]["mean"]
        for name in list(summary)[1:]:
            s = summary[name][metric]
            d, se = s["diff_mean"], s["diff_std"] / math.sqrt(seeds)
            diff = f"paired difference {d:+.4g} ± {s['diff_std']:.3g} (std) over {seeds} seeds"
            if d != 0 and abs(d) > crit * se:
                word = "better" if (d < 0) == low else "worse"
                lines.append(f"- {label[metric]}: **{name} is {word} than the monolith** ({s['mean']:.4g} vs "
                             f"{mono:.4g}; {diff}; paired t-test p < 0.05).")
            else:
                lines.append(f"- {label[metric]}: {name} vs monolith is not distinguishable from seed noise "
                             f"({s['mean']:.4g} vs {mono:.4g}; {diff}).")
    return lines


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(s: dict, digits: int) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def write_results(path: Path, report: dict) -> None:
    summary, scale, budget = report["summary"], report["scale"], report["budget"]
    metrics = metric_names(report["seeds"])
    heads = {"fvd_synth": ("FVD-synth ↓", 3), "mean_attribute_accuracy": ("attribute acc. ↑", 3),
             "fvd": ("FVD (I3D) ↓", 2), "clip_similarity": ("CLIP sim. ↑", 4)}
    attrs = list(report["seeds"][0]["configs"]["monolith"]["attribute_accuracy"])
    lines = ["# DDM ensemble vs monolith at matched training compute", "",
             f"Produced by `benchmarks/ddm_vs_monolith.py` on {report['date']} in {report['wall_min']:.1f} min.", "",
             "```", report["command"], "```", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"{report['machine']['threads']} torch threads, torch "
             f"{report['machine']['torch']}, Python {report['machine']['python']}"
             + (f", GPU {report['machine']['gpu']}" if "gpu" in report["machine"] else "") + ".", "",
             "## Setup", "",
             f"- Data: {scale['clips']} built-in synthetic clips (`data synth`, seed 0), clustered into "
             f"{scale['clusters']} "
             + ("with the run's default embedding (`run init`)" if scale.get("clustering", "embedding") == "embedding"
                else "by the generator's labels: background × warm or cool colour")
             + f"; preset `{scale['preset']}`.",
             f"- Compute: FLOPs per training sample (torch flop counter, one real step): expert "
             f"{budget['flops_per_sample_expert'] / 1e6:.1f} MFLOP, router "
             f"{budget['flops_per_sample_router'] / 1e6:.1f} MFLOP; batch {budget['batch']}.",
             f"- Monolith: {budget['monolith_steps']} steps on all clips = "
             f"{budget['monolith_flops'] / 1e12:.3f} TFLOP.",
             f"- DDM: router {budget['router_steps']} steps ({scale['router_share']:.0%} of the budget) + "
             f"{budget['clusters']} experts × {budget['expert_steps']} steps, each on its own cluster only = "
             f"{budget['ddm_flops'] / 1e12:.3f} TFLOP ({budget['ddm_flops'] / budget['monolith_flops']:.3f} × the "
             f"monolith's). The `{PARIS}` rows use Paris' router (the experts' backbone; it sees x_t and t only)."
             + ("" if not budget["light_router_steps"] else
                " The other rows use the same experts with the run's light router instead (caption-reading "
                "trunk with caption dropout 0.5 and a caption prior, t uniform in training), in the routing mode "
                f"the row names: {budget['flops_per_sample_light_router'] / 1e6:.1f} MFLOP per sample, "
                f"{budget['light_router_steps']} steps, {budget['ddm_light_flops'] / 1e12:.3f} TFLOP in all "
                f"({budget['ddm_light_flops'] / budget['monolith_flops']:.3f} × the monolith's)."),
             f"- Evaluation: {scale['n']} prompts of unseen generator clips, {scale['sample_steps']} sampling steps, "
             f"guidance {scale['guidance']}; the same prompts and initial noise for every configuration; "
             f"{len(report['seeds'])} seeds (each retrains every network).",
             "- Judge (the offline classifier behind FVD-synth and attribute accuracy): held-out accuracy "
             + ", ".join(f"{k} {v:.2f}" for k, v in report["judge_heldout_accuracy"].items()) + ".",
             f"- Clustering: {scale['clustering']} ({scale['clusters']} clusters, sizes "
             f"{report['cluster_sizes']}); the attribute{'s' if len(report['clustered']) > 1 else ''} it splits "
             f"by: {', '.join(report['clustered'])}.", "",
             "## Routers (held-out clips, mean over seeds)", "",
             *router_table(report), "",
             "## Results (mean ± std over seeds)", "",
             "| configuration | " + " | ".join(heads[m][0] for m in metrics) + " | "
             + " | ".join(attrs) + " |",
             "|---|" + "---|" * (len(metrics) + len(attrs))]
    for name in summary:
        row = summary[name]
        lines.append(f"| {name} | " + " | ".join(fmt(row[m], heads[m][1]) for m in metrics) + " | "
                     + " | ".join(fmt(row[f"attr:{a}"], 2) for a in attrs) + " |")
    ceiling = report["seeds"][0]["configs"]["monolith"]["attribute_accuracy_on_real_clips"]
    lines += ["", "Judge on the real clips of the same prompts (the ceiling of attribute accuracy): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ceiling.items()) + ".", "",
              "Paired difference to the monolith (same seed), mean ± std:", "",
              "| configuration | " + " | ".join(heads[m][0] for m in metrics) + " |",
              "|---|" + "---|" * len(metrics)]
    for name in list(summary)[1:]:
        lines.append(f"| {name} − monolith | " + " | ".join(
            f"{summary[name][m]['diff_mean']:+.{heads[m][1]}f} ± {summary[name][m]['diff_std']:.{heads[m][1]}f}"
            for m in metrics) + " |")
    lines += ["", "## What the numbers show", "",
              *verdicts(summary, len(report["seeds"]), clustered=report["clustered"]), ""]
    kept = ""
    if path.is_file():
        old = path.read_text()
        if NOTES in old:
            kept = old[old.index(NOTES):]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def load_feature_nets(args: argparse.Namespace, device: torch.device):
    fvd_net = clip = None
    if args.i3d:
        from expert.i3d import I3DFeatures

        fvd_net = I3DFeatures.from_file(args.i3d, device=device)
    if args.clip_weights:
        from expert.clip_score import ClipScorer

        clip = ClipScorer.from_pretrained(args.clip_model, args.clip_weights, device=device)
    return fvd_net, clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="same as --scale quick")
    ap.add_argument("--scale", choices=list(SCALES), default="quick")
    for field, info in Scale.model_fields.items():
        flag = f"--{field.replace('_', '-')}"
        if info.annotation is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=info.description)
        else:
            ap.add_argument(flag, type=type(getattr(SCALES["quick"], field)), default=None, help=info.description)
    ap.add_argument("--vae", help="local AutoencoderKLWan folder (latent presets: base)")
    ap.add_argument("--text-weights", help="local open_clip weights for the experts' text encoder (base)")
    ap.add_argument("--i3d", help="local I3D weights (pytorch-i3d rgb_imagenet.pt format) to add FVD")
    ap.add_argument("--clip-weights", help="local open_clip weights to add CLIP text-video similarity")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--judge", type=Path, default=Path.home() / ".paris" / "synth-judge")
    ap.add_argument("--work", type=Path, help="folder for data and checkpoints (default: a temporary one)")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true", help="do not write the results file")
    ap.add_argument("--gpu", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 wastes less on a busy shared machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "quick" if args.quick else args.scale
    scale = SCALES[name].model_copy(update={f: getattr(args, f) for f in Scale.model_fields
                                            if getattr(args, f) is not None})
    scale = Scale.model_validate(scale.model_dump())
    try:
        device = resolve_device(args.gpu)
        from expert.assets import asset_of

        preset: ExpertPreset = get_preset(scale.preset, vae=asset_of(args.vae) if args.vae else None,
                                          text_weights=asset_of(args.text_weights) if args.text_weights else None)
    except ParisError as e:
        raise SystemExit(f"error: {e}") from None
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="ddm-vs-monolith-"))
    work.mkdir(parents=True, exist_ok=True)
    b = preset.backbone
    frames = b.frames if b.space == "latent" else max(16, b.frames)
    data = work / f"data-{scale.clips}-{frames}x{b.height}x{b.width}"
    if not (data / "manifest.json").is_file():
        log(f"writing {scale.clips} synthetic clips to {data}")
        write_synthetic(data, clips=scale.clips, seed=0, frames=frames, height=b.height, width=b.width)
    spec = init_run(data, scale.clusters, preset=preset, seed=0, name=f"ddm-vs-monolith-{name}")
    if scale.clustering == "background-colour":
        spec = cluster_by_background_and_colour(spec, data)
        scale = scale.model_copy(update={"clusters": spec.num_clusters})
    if spec.preset.text.stored:  # pretrained text weights: every caption's states are computed once, read with the data
        from expert.latent_data import encode_dataset

        encoded = work / f"encoded-{spec.run_id[:12]}"
        if not (encoded / "manifest.json").is_file():
            log(f"encoding the captions (and latents) once into {encoded}")
            encode_dataset(data, spec.preset, encoded, device=device)
        spec = spec.model_copy(update={"data_hint": str(encoded)})
    sizes = np.bincount(np.asarray(spec.assignments), minlength=scale.clusters).tolist()
    log(f"clusters {sizes}")
    judge = cached_judge(args.judge, on_step=lambda i, total: i == 1 and log("training the synthetic-data judge "
                                                                              "(once)"))
    fvd_net, clip = load_feature_nets(args, device)
    budget = plan_budget(spec, scale)
    log(f"budget: monolith {budget.monolith_steps} steps; router {budget.router_steps} + {scale.clusters} × "
        f"{budget.expert_steps} expert steps (DDM/monolith FLOPs {budget.ddm_flops / budget.monolith_flops:.3f})")
    tag = (f"{spec.run_id[:12]}-{budget.monolith_steps}-{budget.expert_steps}-{budget.router_steps}-"
           f"{budget.light_router_steps or 0}-{scale.n}-{scale.sample_steps}-v2")
    seeds = []
    for seed in range(scale.seeds):
        done = work / f"seed-{seed}-{tag}.json"
        if done.is_file():
            seeds.append(json.loads(done.read_text()))
            log(f"seed {seed}: reusing {done}")
            continue
        seed_dir = work / f"seed-{seed}"
        shutil.rmtree(seed_dir, ignore_errors=True)
        result = run_seed(spec, budget, scale, seed, seed_dir, judge, device, fvd_net, clip)
        done.write_text(json.dumps(result))
        shutil.rmtree(seed_dir, ignore_errors=True)
        seeds.append(result)
    report = {"command": shlex.join(["python", "benchmarks/ddm_vs_monolith.py", *sys.argv[1:]]),
              "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": machine(),
              "wall_min": (time.perf_counter() - started) / 60, "scale_name": name, "scale": scale.model_dump(),
              "cluster_sizes": sizes, "clustered": CLUSTERINGS[scale.clustering], "budget": budget.model_dump(),
              "judge_heldout_accuracy": judge.heldout_accuracy,
              "seeds": seeds, "summary": summarise(seeds)}
    if not args.no_results:
        write_results(args.results, report)
        log(f"wrote {args.results}")
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(verdicts(report["summary"], len(seeds), clustered=report["clustered"])))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
