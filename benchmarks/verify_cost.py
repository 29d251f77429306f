"""What verification costs, and whether replay is exact: for each preset, train one checkpoint interval of an
expert on the built-in data (the run's default cadence), then

- verification seconds per checkpoint (what a verifier, a takeover and `fetch` each do: load with hash and
  slot checks, finiteness, the run's validation loss on the held-out clips) ÷ training seconds of the
  interval it covers. Target ≤ 0.05 without replay.
- replay: re-train the interval from its parent with the same seeds, several times, and count bit-exact
  matches with the published weights (target on CPU: every time), with replay seconds ÷ training seconds.

- the swarm's verification cost per interval at the run's rates: `checkers` verifiers (the quorum plus a
  margin; swarm.verify_plan assigns about that many whatever the number of verifiers) each check it, and
  together they replay it with probability about 1/`replay-every`: (checkers × verify + replay / replay-every)
  ÷ training. Target ≤ 0.15.
- the detection probability per forged interval: measured with the real keyed draws over many CIDs (each of
  the checkers with its own secret), beside the formula 1 − (1 − 1/(replay_every · c))^c.

Measured in one run, so machine noise hits both sides alike.

    python benchmarks/verify_cost.py [--presets tiny small] [--interval 100] [--replays 2] [--clips 400]
                                     [--replay-every 10] [--checkers 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from expert.presets import get_preset
from expert.run_init import init_run
from expert.synth_dataset import write_synthetic
from expert.train_expert import ExpertTrainer, trainer_for_run
from expert.train_inputs import run_clips
from expert.verify import check_content, replay
from swarm.verify_plan import VerifyPlan, detection_probability, verifier_secret


def detection(replay_every: int, checkers: int, intervals: int = 20000) -> dict:
    """The keyed replay draws of `checkers` verifiers over `intervals` CIDs: how often at least one replays."""
    plans = [VerifyPlan(verifier_secret(f"bench-{v}".encode()), wanted=checkers, replay_every=replay_every,
                        patience=30.0) for v in range(checkers)]
    cids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(intervals)]
    caught = sum(any(p.replays(c, eligible=checkers) for p in plans) for c in cids) / intervals
    return {"checkers": checkers, "measured": round(caught, 4),
            "formula": round(detection_probability(replay_every, checkers), 4)}


def measure(preset_name: str, data: Path, work: Path, interval: int, replays: int, clusters: int) -> dict:
    spec = init_run(data, clusters, preset=get_preset(preset_name), seed=0, name="bench")
    trainer = trainer_for_run(spec, 0, data_dir=data)
    trainer.train(2)  # past the first steps' one-off costs
    parent, _ = trainer.checkpoint(work / preset_name / "trainer")
    t0 = time.perf_counter()
    trainer.train(interval)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    child, meta = trainer.checkpoint(work / preset_name / "trainer")
    save_s = time.perf_counter() - t0  # includes the trainer's own validation loss

    t0 = time.perf_counter()
    checker = trainer_for_run(spec, 0, data_dir=data)
    setup_s = time.perf_counter() - t0  # once per slot per verifier
    verify = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = check_content(checker, child, step=meta.step, parent=meta.parent, claimed_loss=meta.val_loss,
                               rtol=spec.validation.rtol)
        verify.append(time.perf_counter() - t0)
        assert report.ok, report.reason
    # a verifier replays with the cluster's clips it already fetched, into a trainer as node.checker builds one
    train_clips = run_clips(spec, data).select(spec.train_clips(0))

    def make() -> ExpertTrainer:
        return ExpertTrainer(spec.preset, train_clips, seed=spec.seed, run_id=spec.run_id, cluster=0)

    exact, times, errors = 0, [], []
    for _ in range(replays):
        t0 = time.perf_counter()
        r = replay(make, parent, child, meta, tolerance=0.01)
        times.append(time.perf_counter() - t0)
        exact += r.exact
        errors.append(r.rel_error)
    verify_s = statistics.median(verify)
    return {
        "preset": preset_name, "interval_steps": interval, "train_s": round(train_s, 3),
        "checkpoint_save_s": round(save_s, 3), "held_out_clips": len(spec.holdout_clips(0)),
        "val_samples": len(spec.holdout_clips(0)) * len(spec.validation.t_grid),
        "verify_s": round(verify_s, 4), "verify_setup_s": round(setup_s, 3),
        "verify_ratio": round(verify_s / train_s, 4),
        "replays": replays, "replay_exact": exact, "replay_match_rate": round(exact / replays, 3) if replays else None,
        "replay_max_rel_error": max(errors) if errors else None,
        "replay_ratio": round(statistics.median(times) / train_s, 3) if times else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--interval", type=int, default=100, help="steps per checkpoint interval (Schedule default)")
    ap.add_argument("--replays", type=int, default=2)
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--clusters", type=int, default=2)
    ap.add_argument("--replay-every", type=int, default=10, help="the run's rate (Schedule default)")
    ap.add_argument("--checkers", type=int, default=3, help="verifiers per checkpoint: quorum 1 + margin 2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        results = []
        for p in args.presets:
            b = get_preset(p).backbone
            d = data / p
            write_synthetic(d, clips=args.clips, seed=0, frames=b.frames, height=b.height, width=b.width)
            results.append(measure(p, d, Path(tmp), args.interval, args.replays, args.clusters))
    for r in results:
        r["swarm_ratio"] = round(args.checkers * r["verify_ratio"] + (r["replay_ratio"] or 0) / args.replay_every, 4)
    detect = [detection(args.replay_every, c) for c in range(1, args.checkers + 1)]
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    if args.json:
        print(json.dumps({"machine": machine, "replay_every": args.replay_every, "checkers": args.checkers,
                          "results": results, "detection": detect}))
        return
    print(f"machine: {machine}")
    print(f"{'preset':7} {'steps':>5} {'train s':>8} {'verify s':>9} {'ratio':>7} {'replay exact':>12} "
          f"{'replay/train':>12}")
    for r in results:
        print(f"{r['preset']:7} {r['interval_steps']:>5} {r['train_s']:>8} {r['verify_s']:>9} {r['verify_ratio']:>7} "
              f"{r['replay_exact']:>6}/{r['replays']:<5} {r['replay_ratio']:>12}")
    print(f"swarm verification ÷ training ({args.checkers} checkers, replay-every {args.replay_every}): "
          + ", ".join(f"{r['preset']} {r['swarm_ratio']}" for r in results) + "  (target ≤ 0.15)")
    print("detection per forged interval: " + ", ".join(
        f"{d['checkers']} checker(s) {d['measured']} (formula {d['formula']})" for d in detect))


if __name__ == "__main__":
    main()
