"""A researcher's own videos, end to end through the CLI's entry point (in this process, tests/commands.py;
Ctrl-C as a real process): `data prepare` (a Hugging Face VideoFolder, two
worker processes), `run init` from a run config (a non-square model; clustered with DINOv2, random weights saved
with save_pretrained; the synthetic feature refused), `run show`, a few `train-local` steps (loss curves to
TensorBoard), and `eval --run` on the held-out clips."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import cli_inproc
from tests.videos import write_video

pytestmark = pytest.mark.slow  # about a minute

CLI = [sys.executable, "-m", "node.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    proc = cli_inproc(*args)  # the CLI's own entry point, in this process (tests/commands.py)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_own_videos_prepare_init_and_train(tmp_path):
    import torch

    root = tmp_path / "my-videos"
    rows = []
    for i in range(12):  # two kinds of source, different rates and sizes
        name = f"{'wide' if i % 2 else 'tall'}/{i:02d}.mp4"
        h, w = (72, 128) if i % 2 else (96, 64)
        fps = (12, 24, 30)[i % 3]
        write_video(root / "train" / name, frames=round(fps * (1.2 + 0.1 * i)), fps=fps, height=h, width=w)
        rows.append({"file_name": name, "text": f"{'a wide' if i % 2 else 'a tall'} view, take {i}"})
    (root / "train" / "broken.mp4").write_bytes(b"nope" * 64)
    rows.append({"file_name": "broken.mp4", "text": "broken"})
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    prep = run("data", "prepare", "--videos", root, "--out", tmp_path / "data", "--frames", 8, "--fps", 8,
               "--size", "24x32", "--workers", 2, "--json")
    report = json.loads(prep.stdout)
    assert report["written"] == 12 and report["layout"] == "videofolder", report["skipped"]
    assert [s["file"] for s in report["skipped"]] == ["train/broken.mp4"]
    assert 0 < report["peak_worker_rss"] < 300 << 20
    again = run("data", "prepare", "--videos", root, "--out", tmp_path / "data", "--frames", 8, "--fps", 8,
                "--size", "24x32", "--workers", 2)
    said = " ".join((again.stdout + again.stderr).split())  # rich wraps long lines
    assert f"data id {report['data_id']}" in said and "1 skipped (all listed in" in said

    refused = run("run", "init", "--data", tmp_path / "data", "--clusters", 2, "--preset", "tiny", "--out",
                  tmp_path / "run.json", "--home", tmp_path / "home", check=False)
    assert refused.returncode != 0 and "or --clip-weights FILE" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr

    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)  # a tiny random DINOv2 stands in for a downloaded one (no preprocessor config: defaults)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(tmp_path / "dinov2")
    (tmp_path / "run.toml").write_text(  # a non-square run, shaped by a config file (clusters from the flag)
        'preset = "tiny"\nname = "mine"\n[video]\nframes = 8\nheight = 24\nwidth = 32\nfps = 8\n'
        '[model]\nlayers = 2\nhead_dim = 16\n[train]\nbatch_size = 4\ntarget_steps = 40\n'
        '[models]\ndinov2 = "dinov2"\n')
    init = run("run", "init", "--data", tmp_path / "data", "--clusters", 2, "--config", tmp_path / "run.toml",
               "--out", tmp_path / "run.json", "--home", tmp_path / "home", "--json")
    info = json.loads(init.stdout)
    assert sum(info["balance"]["sizes"]) == 12
    spec = json.loads((tmp_path / "run.json").read_text())
    assert spec["embedding"]["method"] == "dinov2-image" and spec["data"]["source"] == "real"
    assert (spec["data"]["frames"], spec["data"]["height"], spec["data"]["width"]) == (8, 24, 32)
    models = spec["config"]["models"]  # the weights are named by CID (embedding.weights), not by path
    assert models["dinov2"] is None and spec["embedding"]["weights"]["name"] == "dinov2"
    shown = json.loads(run("run", "show", info["run_id"], "--home", tmp_path / "home", "--json").stdout)
    assert shown["config"]["video"] == {"frames": 8, "height": 24, "width": 32, "fps": 8.0}
    assert shown["config"]["model"]["layers"] == 2 and shown["config"]["train"]["target_steps"] == 40
    assert shown["config"]["name"] == "mine" and shown["config"]["clusters"] == 2
    run("train-local", "--run", tmp_path / "run.json", "--cluster", 0, "--steps", 2, "--out", tmp_path / "ck",
        "--checkpoint-every", 1, "--tensorboard", tmp_path / "tb")
    assert any((tmp_path / "ck").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(str(tmp_path / "tb" / "expert-0")).Reload()
    assert [e.step for e in curves.Scalars("loss/train")] == [e.step for e in curves.Scalars("loss/validation")] \
        == [1, 2]
    measured = json.loads(run("eval", "--checkpoint", tmp_path / "ck", "--run", info["run_id"], "--home",
                              tmp_path / "home", "--n", 2, "--steps", 1, "--json").stdout)
    row = measured["rows"]["expert_0"]  # no FVD / CLIP weights here: the held-out loss, which needs none
    assert row["videos"] == 2 and row["val_loss"] > 0 and row["heldout_clips"] == len(spec["validation"]["holdout"][0])


def test_ctrl_c_then_the_same_command_continues(tmp_path):
    import os
    import shutil
    import signal
    import time

    root = tmp_path / "videos"
    first = write_video(root / "v00.mp4", frames=240, fps=24, height=180, width=320)  # 10 s: each clip seeks
    n = 160  # ~1 s of decoding after the first shard lands (5 ms a clip): the interrupt comes mid-run even under load
    for i in range(1, n):
        shutil.copy(first, root / f"v{i:02d}.mp4")
    (root / "caps.csv").write_text("video,caption\n" + "".join(f"v{i:02d}.mp4,take {i}\n" for i in range(n)))
    args = ["data", "prepare", "--videos", root, "--captions", root / "caps.csv", "--frames", 8, "--size",
            "16x16", "--workers", 1, "--clips-per-shard", 1, "--json"]
    inherited = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # Ctrl-C reaches the command as it would from a shell, whatever this process (after 500 tests) ignores or
    # blocks, which a child inherits: CI twice saw the command run to its end through the interrupt
    in_a_terminal = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); from node.cli import main; main()"]
    proc = subprocess.Popen([*in_a_terminal, *map(str, args), "--out", str(tmp_path / "data")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "data" / "prepare-state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    said = "".join(proc.communicate(timeout=120))
    assert proc.returncode == 130 and "Traceback" not in said, (said, inherited)
    assert state.exists() and not (tmp_path / "data" / "manifest.json").exists()
    resumed = json.loads(run(*args, "--out", tmp_path / "data").stdout)
    whole = json.loads(run(*args, "--out", tmp_path / "whole").stdout)
    assert 0 < resumed["resumed"] < n and resumed["written"] == n and whole["resumed"] == 0
    assert resumed["data_id"] == whole["data_id"]
    assert not state.exists() and os.path.isfile(tmp_path / "data" / "prepare-report.json")
