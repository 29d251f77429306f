"""The commands a user types: in this process through the CLI's own entry point (tests/commands.py), and as
real processes where a process matters (Ctrl-C, a hidden GPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.identity import load_identity
from tests import zygote
from tests.commands import cli_inproc
from tests.zygote import ENV

pytestmark = pytest.mark.slow  # real processes, a few minutes in all

CLI = [sys.executable, "-m", "node.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True, env=None):
    """One command: in this process (tests/commands.py), or as a real process when it needs its own `env`."""
    if env is None:
        proc = cli_inproc(*args)
    else:
        proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = run("data", "synth", "--out", d / "data", "--clips", 60, "--seed", 1, "--frames", 8, "--size", "24x24",
              "--json")
    summary = json.loads(out.stdout)
    assert summary["clips"] == 60 and summary["data_id"].startswith("data-")
    init = run("run", "init", "--data", d / "data", "--clusters", 2, "--preset", "tiny", "--out", d / "run.json",
               "--home", d / "home", "--json")
    info = json.loads(init.stdout)
    assert info["run_id"].startswith("run-") and len(info["run_id"]) == 4 + 32  # 128 bits
    assert sum(info["balance"]["sizes"]) == 60
    spec = json.loads((d / "run.json").read_text())
    assert spec["creator"].encode() == (load_identity(d / "home").public_key_bytes)  # the run id commits to it
    return d


def test_train_resume_and_sample(workdir):
    run("train-local", "--run", workdir / "run.json", "--cluster", 1, "--steps", 3, "--out", workdir / "ck")
    assert (workdir / "ck" / "LATEST").read_text().strip() == "step-00000003"
    out = run("train-local", "--run", workdir / "run.json", "--cluster", 1, "--steps", 2, "--out", workdir / "ck",
              "--resume", workdir / "ck")
    assert "resumed from step 3" in out.stderr and "at step 5" in out.stdout
    run("sample", "--checkpoint", workdir / "ck", "a red circle moving left", "--steps", 3, "--out",
        workdir / "v.gif", "--num-videos", 2)
    run("sample", "--checkpoint", workdir / "ck", "a red circle moving left", "--steps", 3, "--out",
        workdir / "v.mp4")
    assert (workdir / "v.gif").read_bytes()[:6] == b"GIF89a"
    import av

    with av.open(str(workdir / "v.mp4")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 8 and frames[0].width >= 256


@pytest.mark.parametrize("args, message", [
    (["train-local", "--run", "missing.json", "--cluster", 0, "--steps", 1, "--out", "x"], "does not exist"),
    (["sample", "--checkpoint", "/nonexistent", "p", "--out", "v.gif"], "holds no checkpoint"),
    (["sample", "--checkpoint", "/nonexistent", "p", "--out", "v.avi"], "must end in .mp4 or .gif"),
    (["run", "init", "--data", "/nonexistent", "--clusters", 2, "--out", "r.json"], "not a paris-node data set"),
    (["train-local", "--run", "{run}", "--cluster", 7, "--steps", 1, "--out", "x"], "cluster 7 does not exist"),
    (["train-local", "--run", "{run}", "--cluster", 0, "--steps", 1, "--out", "x", "--gpu", "0"], "no CUDA"),
    (["run", "init", "--data", "{data}", "--clusters", 2, "--out", "r.json", "--preset", "base"], "--vae DIR"),
    (["run", "init", "--data", "{data}", "--clusters", 2, "--out", "r.json", "--vae", "{data}"],
     "--vae is for the latent presets"),
    (["run", "init", "--data", "{data}", "--clusters", 2, "--out", "r.json", "--preset", "tiny-latent", "--vae",
      "/nonexistent/vae"], "no such file or folder"),
    (["run", "init", "--data", "{data}", "--clusters", 2, "--out", "r.json", "--gpu", "0"], "no CUDA"),
    (["join", "--preset", "tiny-latent"], "trains through a VAE"),
    (["join", "--gpu", "cpu,1"], "no CUDA"),
    (["join", "--gpu", "cpu", "--ddp"], "--ddp needs two or more devices"),
])
def test_user_mistakes_get_one_line(workdir, args, message):
    args = [str(a).replace("{run}", str(workdir / "run.json")).replace("{data}", str(workdir / "data")) for a in args]
    # the device mistakes in a process of their own, with CUDA hidden (this process may see a GPU)
    proc = run(*args, check=False, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""} if "--gpu" in args else None)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint(workdir):
    out = workdir / "interrupted"
    proc = zygote.popen([*CLI, "train-local", "--run", str(workdir / "run.json"), "--cluster", "0", "--steps",
                         "100000", "--out", str(out), "--checkpoint-every", "2"],
                        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "LATEST").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping at the next step boundary" in stderr
    latest = (out / "LATEST").read_text().strip()
    step = int(latest.split("-")[1])
    assert f"at step {step}," in stdout  # the final checkpoint is the step where it stopped
