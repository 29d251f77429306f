"""benchmarks/gpu_throughput.py runs unchanged on a CPU (a smoke check of the script a GPU volunteer runs)."""

import json
import sys
from pathlib import Path

import pytest

from tests import zygote
from tests.zygote import ENV

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_throughput import peak_for_name  # noqa: E402


def test_device_peaks_come_from_the_longest_matching_name():
    assert peak_for_name("NVIDIA H200") == 989.0
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_for_name("NVIDIA L40S") == 362.0  # not L40's
    assert peak_for_name("NVIDIA GeForce RTX 4090") == 165.0
    assert peak_for_name("Some Future Accelerator") is None


@pytest.mark.slow
def test_the_script_reports_throughput_memory_and_mfu_on_a_cpu():
    r = zygote.run_to_end([sys.executable, "benchmarks/gpu_throughput.py", "--gpu", "cpu", "--presets", "tiny",
                           "--steps", "1", "--rounds", "1", "--warmup", "1", "--peak-tflops", "1.0", "--json"],
                          cwd=ROOT, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    (row,) = out["results"]
    assert row["preset"] == "tiny" and row["params"] > 0 and row["tokens"] == 256
    assert row["tflop_per_step"] > 0 and row["bare_samples_per_s"] > 0 and row["trainer_samples_per_s"] > 0
    assert row["mfu"] == pytest.approx(row["achieved_tflops"], abs=2e-3)  # against the 1 TFLOP/s given
    assert row["bare_peak_gib"] is None  # no device memory to report on a CPU


@pytest.mark.slow
def test_the_gpu_check_runs_the_latent_path_end_to_end_at_toy_size():
    """benchmarks/gpu_check.py --toy on a CPU (~15 s): stand-ins saved and loaded, VAE and text states timed per
    clip, training on stored states, and two same-seed trainers that agree exactly (as a CPU replay does)."""
    r = zygote.run_to_end([sys.executable, "benchmarks/gpu_check.py", "--gpu", "cpu", "--toy", "--steps", "1",
                           "--clips", "8", "--peak-tflops", "1.0", "--json"], cwd=ROOT, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["preset"] == "tiny-latent" and out["latent_shape"] == [4, 5, 16, 16] and out["text_shape"] == [32, 16]
    assert out["vae_encode_s_per_clip"] > 0 and out["text_states_s_per_clip"] > 0 and out["samples_per_s"] > 0
    assert out["tflop_per_step"] > 0 and out["mfu"] == pytest.approx(out["achieved_tflops"], abs=2e-3)
    assert out["same_seed"] == {"relative_distance": 0.0, "tolerance": 0.01, "agree": True, "steps": 2}
