"""Two tiny experts and a router trained on synthetic clusters → an ensemble folder → ParisPipeline."""

import json
import sys
from pathlib import Path

import pytest

from expert.pipeline import ParisPipeline, assemble
from protocol.errors import IntegrityError, ParisError
from tests import zygote
from tests.commands import cli_inproc
from tests.ensembles import tiny_ensemble
from tests.zygote import ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ensemble_dir(tiny_run, tmp_path_factory):
    spec, _ = tiny_run
    folder, router = tiny_ensemble(spec, tmp_path_factory.mktemp("ens"), steps=3, cap=60)
    report = router.evaluate(samples=32, bins=4)
    assert 0.0 <= report["accuracy"] <= 1.0 and len(report["per_noise_level"]) >= 2
    return folder


def test_folder_layout(ensemble_dir):
    names = {p.name for p in ensemble_dir.iterdir()}
    assert {"model_index.json", "expert_0", "expert_1", "router", "text_encoder", "scheduler"} <= names
    for d in ("expert_0", "expert_1", "router"):
        assert (ensemble_dir / d / "config.json").is_file()
        assert (ensemble_dir / d / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((ensemble_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["paris_pipeline", "ParisPipeline"] and index["num_experts"] == 2
    assert index["paris"]["experts"][1]["cluster"] == 1


@pytest.mark.parametrize("strategy", ["full", "top1", "top2", "topk:2", "threshold:0.4", "sample:1"])
def test_every_strategy_gives_a_video_and_runs_only_selected_experts(ensemble_dir, strategy):
    pipe = ParisPipeline.from_pretrained(ensemble_dir)
    calls = {0: [], 1: []}
    for k, e in enumerate(pipe.experts):
        e.register_forward_pre_hook(lambda m, args, k=k: calls[k].append(args[0].shape[0]))
    videos, record = pipe("a red circle moving left", strategy=strategy, num_inference_steps=3,
                          num_videos_per_prompt=3, record_routing=True, guidance_scale=3.0, output_type="uint8",
                          return_dict=False)
    assert videos.shape == (3, 8, 32, 32, 3) and videos.dtype.name == "uint8"
    assert len(record) == 3
    for step in record:
        for row in step["weights"]:
            assert abs(sum(row) - 1) < 1e-4
    # each step runs an expert at most once, on exactly the rows that selected it (×2: guidance batches the
    # conditional and unconditional passes together); an expert no row selects is not run at all
    for k in range(2):
        expected = [2 * n for n in (sum(1 for row in step["weights"] if row[k] > 0) for step in record) if n]
        assert calls[k] == expected, (k, calls[k], expected)


def test_offload_keeps_idle_experts_on_cpu(ensemble_dir):
    pipe = ParisPipeline.from_pretrained(ensemble_dir).to("cpu", offload=True)
    videos = pipe("a blue square", strategy="top1", num_inference_steps=2, offload=True).frames
    assert videos.shape[0] == 1


def test_corrupt_ensemble_is_refused(ensemble_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ensemble_dir, bad)
    f = bad / "expert_1" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"expert_1/diffusion_pytorch_model\.safetensors is corrupt"):
        ParisPipeline.from_pretrained(bad)
    with pytest.raises(IntegrityError, match="not an ensemble folder"):
        ParisPipeline.from_pretrained(tmp_path)


def test_assemble_refuses_mismatched_parts(tiny_run, ensemble_dir, tmp_path):
    root = ensemble_dir.parent
    with pytest.raises(ParisError, match="routes 2 experts, 1 were given"):
        assemble([root / "expert0"], root / "router", tmp_path / "x")
    with pytest.raises(ParisError, match="not a router checkpoint"):
        assemble([root / "expert0", root / "expert1"], root / "expert0", tmp_path / "x")
    with pytest.raises(ParisError, match="trained on cluster 1, expected cluster 0"):
        assemble([root / "expert1", root / "expert0"], root / "router", tmp_path / "x")
    from expert.shards import load_dataset
    from expert.train_expert import ExpertTrainer

    spec = tiny_run[0]
    loose = ExpertTrainer(spec.preset, load_dataset(spec.data_hint)[1].select(spec.train_clips(1)))
    loose.train(1, checkpoint_dir=tmp_path / "loose")  # no run: a local experiment
    with pytest.raises(ParisError, match=r"belongs to run \(none\)"):
        assemble([root / "expert0", tmp_path / "loose"], root / "router", tmp_path / "x")


def test_cli_samples_an_ensemble_grid_with_routing_record(ensemble_dir, tmp_path):
    out, routing = tmp_path / "grid.gif", tmp_path / "routing.json"
    proc = cli_inproc("sample", "--ensemble", str(ensemble_dir), "a green cross rising", "--strategy", "top2",
                      "--steps", "3", "--num-videos", "4", "--out", str(out), "--routing-out", str(routing))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(routing.read_text())
    assert rec["strategy"] == "topk:2" and len(rec["steps"]) == 3 and len(rec["steps"][0]["weights"]) == 4
    assert out.read_bytes()[:6] == b"GIF89a"
    bad = cli_inproc("sample", "--ensemble", str(ensemble_dir), "x", "--strategy", "best", "--out", str(out))
    assert bad.returncode != 0 and "unknown strategy 'best'" in bad.stderr and "Traceback" not in bad.stderr
    caption = cli_inproc("sample", "--ensemble", str(ensemble_dir), "a green cross rising", "--steps", "2",
                         "--router-mode", "caption", "--out", str(out), "--routing-out", str(routing))
    assert caption.returncode == 0, caption.stderr
    rec = json.loads(routing.read_text())
    assert rec["router_mode"] == "caption" and rec["steps"][0]["posterior"] == rec["steps"][1]["posterior"]
    wrong = zygote.run_to_end([sys.executable, "-m", "node.cli", "sample", "--ensemble", str(ensemble_dir), "x",
                               "--out", str(out), "--router-mode", "best"], cwd=Path(__file__).resolve().parents[1],
                              timeout=300, env={**ENV, "COLUMNS": "300"})  # no wrapping inside the error box
    assert wrong.returncode == 2 and "choose one of xt, joint, combined, caption" in wrong.stderr, wrong.stderr


def test_partial_ensemble_routes_only_between_present_experts(ensemble_dir, tmp_path):
    """`fetch --allow-partial`: one expert of two; the router keeps only that expert's output."""
    import torch

    root = ensemble_dir.parent
    out = assemble([root / "expert1"], root / "router", tmp_path / "partial", clusters=[1])
    pipe = ParisPipeline.from_pretrained(out)
    assert len(pipe.experts) == 1 and pipe.router.head.keep == (1,)
    full = ParisPipeline.from_pretrained(ensemble_dir)
    x, t = torch.randn(2, *full.codec.latent_shape()), torch.full((2,), 500.0)
    text = torch.zeros(2, 1, full.router.text_dim)
    assert torch.allclose(pipe.router(x, t, text), full.router(x, t, text)[:, [1]])
    videos, record = pipe("a red square moving left", strategy="full", num_inference_steps=2, record_routing=True,
                          return_dict=False)
    assert videos.shape[0] == 1 and all(r["weights"] == [[1.0]] for r in record)
    with pytest.raises(ParisError, match="keep must list"):
        assemble([root / "expert1"], root / "router", tmp_path / "bad", clusters=[5])
