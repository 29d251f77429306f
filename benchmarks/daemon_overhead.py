"""Training speed inside the daemon vs the bare training API, measured interleaved in one run, and where the
daemon's CPU goes.

daemon: a real `paris-node join` process (DHT, content store, gossip worker, lease renewals, progress records,
        checkpoints published into the content store every `--every` steps) trains cluster 0 of a one-cluster
        demo run for `--steps` steps; its own log reports mean samples/s over the training wall time and the
        wall and CPU seconds of the checkpoints' validation losses.
bare:   `ExpertTrainer.train` on the same run and cluster, in this process, for the same steps, writing
        checkpoints at the same cadence (no network), validating each one in the training thread.

Both validate every checkpoint: the validation loss is the run's, not the harness's, so it is counted apart
(`ratio_excluding_validation`: samples over training seconds less validation seconds, daemon over bare).
The CPU of every process of the daemon (psutil, from its first training step to its last) is reported per
second of training: the main process (of it, the event-loop thread and the validation), the hivemind DHT
process, its p2pd daemon and the gossip worker. CPU per step is steadier than wall time where other work
shares the cores: OpenMP threads that lose their core spin or sleep, and both arms pay it alike.
Target: daemon / bare ≥ 0.95 without the validation. Both use `--threads` torch threads.

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

import psutil

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("main", "main_event_loop", "validation", "dht", "p2pd", "gossip", "other")


def _component(proc: psutil.Process, main_pid: int) -> str:
    if proc.pid == main_pid:
        return "main"
    name, cmd = proc.name(), " ".join(proc.cmdline())
    if "p2pd" in name:
        return "p2pd"
    if "swarm.gossip_worker" in cmd:
        return "gossip"
    if "node.cli" in cmd:  # hivemind's DHT runs in a process forked from the daemon's
        return "dht"
    return "other"


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every process of the daemon, by component, and of its event-loop thread."""
    out = dict.fromkeys(COMPONENTS, 0.0)
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[_component(proc, pid)] += t.user + t.system
        except psutil.Error:  # a child that just ended
            continue
    loop = next((t for t in root.threads() if t.id == pid), None)  # the main thread runs the event loop
    out["main_event_loop"] = loop.user_time + loop.system_time if loop is not None else 0.0
    return out


def daemon_run(home: Path, preset: str, steps: int, every: int, threads: int, clips: int) -> tuple[dict, Path]:
    """What the daemon reports for its expert and the CPU of its processes over the training, and the run spec
    it made (for the bare run)."""
    log = home.with_suffix(".log")
    cmd = [sys.executable, "-c", "from node.cli import main; main()", "join", "--home", str(home), "--preset", preset,
           "--clusters", "1", "--clips", str(clips), "--target-steps", str(steps), "--checkpoint-every", str(every),
           "--router-steps", "1", "--period", "2", "--cpu-threads", str(threads), "--log-format", "json"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        try:
            deadline, start, seen = time.monotonic() + 1800, None, 0
            while time.monotonic() < deadline:
                with open(log, "rb") as f:
                    f.seek(seen)
                    chunk = f.read()
                lines = chunk[:chunk.rfind(b"\n") + 1]
                seen += len(lines)
                for line in lines.decode(errors="replace").splitlines():
                    if not line.startswith("{"):
                        continue
                    e = json.loads(line)
                    if e.get("msg") == "training expert-0":
                        start = _cpu(proc.pid)
                    elif e.get("msg") == "expert-0 reached its target":
                        end = _cpu(proc.pid)
                        if start is None:
                            raise RuntimeError(f"the daemon never said it started training; see {log}")
                        cpu = {k: end[k] - start[k] for k in COMPONENTS}
                        cpu["validation"] = e["validation_cpu_seconds"]
                        return {**e, "cpu": cpu}, next((home / "demo").glob("*/run.json"))
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}; see {log}")
                time.sleep(0.05)  # CPU counted between two polls is within ±0.05 s × the cores in use
            raise RuntimeError(f"the daemon did not finish in time; see {log}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def bare_run(run_file: Path, steps: int, every: int, work: Path) -> dict:
    from expert.train_expert import trainer_for_run
    from protocol.run import RunSpec

    spec = RunSpec.load(run_file)
    trainer = trainer_for_run(spec, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train(steps, checkpoint_dir=work, checkpoint_every=every)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "validation_seconds": trainer.validation_seconds, "validation_cpu_seconds": trainer.validation_cpu_seconds}


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
    rounds = []
    with tempfile.TemporaryDirectory(prefix="paris-overhead-") as tmp:
        for r in range(args.rounds):
            d, run_file = daemon_run(Path(tmp) / f"home{r}", args.preset, args.steps, args.every, args.threads,
                                     args.clips)
            b = bare_run(run_file, args.steps, args.every, Path(tmp) / f"bare{r}")
            samples = d["mean_samples_per_s"] * d["seconds"]  # steps × batch × accumulation
            secs = d["seconds"]
            rounds.append({
                "daemon_samples_per_s": round(samples / secs, 2),
                "bare_samples_per_s": round(samples / b["seconds"], 2),
                "daemon_samples_per_s_excluding_validation": round(samples / (secs - d["validation_seconds"]), 2),
                "bare_samples_per_s_excluding_validation": round(samples / (b["seconds"] - b["validation_seconds"]), 2),
                "daemon_validation_seconds": d["validation_seconds"], "bare_validation_seconds":
                    round(b["validation_seconds"], 3), "validation_inline": d["validation_inline"],
                # CPU seconds per second of training, by component (main includes event loop and validation)
                "daemon_cpu_per_train_s": {k: round(v / secs, 3) for k, v in d["cpu"].items()},
                "bare_cpu_per_train_s": round(b["cpu_seconds"] / b["seconds"], 3),
                "daemon_cpu_ms_per_step": round(1000 * (sum(v for k, v in d["cpu"].items() if k in
                                                            ("main", "dht", "p2pd", "gossip", "other"))) / args.steps),
                "bare_cpu_ms_per_step": round(1000 * b["cpu_seconds"] / args.steps),
            })
            if not args.json:
                x = rounds[-1]
                print(f"round {r}: daemon {x['daemon_samples_per_s']} samples/s, bare {x['bare_samples_per_s']} "
                      f"(without validation {x['daemon_samples_per_s_excluding_validation']} vs "
                      f"{x['bare_samples_per_s_excluding_validation']}); CPU per step {x['daemon_cpu_ms_per_step']} "
                      f"vs {x['bare_cpu_ms_per_step']} ms; daemon CPU per training second "
                      f"{x['daemon_cpu_per_train_s']}", flush=True)
    ratio = [x["daemon_samples_per_s"] / x["bare_samples_per_s"] for x in rounds]
    ratio_nv = [x["daemon_samples_per_s_excluding_validation"] / x["bare_samples_per_s_excluding_validation"]
                for x in rounds]
    cpu = [x["daemon_cpu_ms_per_step"] / x["bare_cpu_ms_per_step"] for x in rounds]
    report = {
        "preset": args.preset, "steps": args.steps, "checkpoint_every": args.every, "rounds": rounds,
        "threads": args.threads, "ratio_median": round(statistics.median(ratio), 3),
        "ratio_excluding_validation_median": round(statistics.median(ratio_nv), 3),
        "cpu_per_step_ratio_median": round(statistics.median(cpu), 3),
        "target": 0.95, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"daemon / bare samples/s (median of {args.rounds}): {report['ratio_median']}; without the "
              f"validation loss: {report['ratio_excluding_validation_median']} (target ≥ 0.95); daemon / bare CPU "
              f"per step: {report['cpu_per_step_ratio_median']}")


if __name__ == "__main__":
    main()
