"""Training speed inside the daemon vs the bare training API, measured interleaved in one run.

daemon: a real `paris-node join` process (DHT, content store, gossip worker, lease renewals, progress records,
        checkpoints published into the content store every `--every` steps) trains cluster 0 of a one-cluster
        demo run for `--steps` steps; its own log reports mean samples/s over the training wall time.
bare:   `ExpertTrainer.train` on the same run and cluster, in this process, for the same steps, writing
        checkpoints at the same cadence (no network).
Target: daemon / bare ≥ 0.95. Both use `--threads` torch threads; run it on an otherwise idle machine.

    python benchmarks/daemon_overhead.py [--preset tiny] [--steps 150] [--every 50] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def daemon_run(home: Path, preset: str, steps: int, every: int, threads: int, clips: int) -> tuple[float, Path]:
    """Samples/s the daemon reports for its expert, and the run spec it made (for the bare run)."""
    log = home.with_suffix(".log")
    cmd = [sys.executable, "-c", "from node.cli import main; main()", "join", "--home", str(home), "--preset", preset,
           "--clusters", "1", "--clips", str(clips), "--target-steps", str(steps), "--checkpoint-every", str(every),
           "--router-steps", "1", "--period", "2", "--cpu-threads", str(threads), "--log-format", "json"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        try:
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("{") and (e := json.loads(line)).get("msg") == "expert-0 reached its target":
                        return e["mean_samples_per_s"], next((home / "demo").glob("*/run.json"))
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}; see {log}")
                time.sleep(0.5)
            raise RuntimeError(f"the daemon did not finish in time; see {log}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def bare_run(run_file: Path, steps: int, every: int, work: Path) -> float:
    from expert.train_expert import trainer_for_run
    from protocol.run import RunSpec

    spec = RunSpec.load(run_file)
    trainer = trainer_for_run(spec, 0)
    t0 = time.perf_counter()
    trainer.train(steps, checkpoint_dir=work, checkpoint_every=every)
    seconds = time.perf_counter() - t0
    t = spec.preset.train
    return steps * t.batch_size * t.grad_accum / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    daemon, bare = [], []
    with tempfile.TemporaryDirectory(prefix="paris-overhead-") as tmp:
        for r in range(args.rounds):
            sps, run_file = daemon_run(Path(tmp) / f"home{r}", args.preset, args.steps, args.every, args.threads,
                                       args.clips)
            daemon.append(sps)
            bare.append(bare_run(run_file, args.steps, args.every, Path(tmp) / f"bare{r}"))
            if not args.json:
                print(f"round {r}: daemon {daemon[-1]:.2f} samples/s, bare {bare[-1]:.2f} samples/s", flush=True)
    report = {
        "preset": args.preset, "steps": args.steps, "checkpoint_every": args.every, "rounds": args.rounds,
        "threads": args.threads, "daemon_samples_per_s": daemon, "bare_samples_per_s": bare,
        "ratio_median": round(statistics.median(d / b for d, b in zip(daemon, bare, strict=True)), 3),
        "target": 0.95, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"daemon / bare samples/s (median of {args.rounds}): {report['ratio_median']} (target ≥ 0.95)")


if __name__ == "__main__":
    main()
