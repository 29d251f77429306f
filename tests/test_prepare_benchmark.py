"""benchmarks/prepare_throughput.py runs end to end on a small source and reports what it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns decoding processes; ~20 s

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_throughput_smoke(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/prepare_throughput.py", "--seconds", "4", "--source-size",
                        "160x90", "--clips", "2", "--old-seconds", "2", "--workers", "1,2", "--work", str(tmp_path),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["source"]["size"] == "160x90" and result["whole_video_decode"]["source_seconds"] == 2
    assert [run["workers"] for run in result["streamed"]] == [1, 2]
    for run in result["streamed"]:
        assert run["clips"] == 2 and run["clips_per_s"] > 0 and run["decode_cpu_s_per_clip"] > 0
        assert 0 < run["peak_rss_mb_per_worker"] < 300
    assert result["speedup"] > 0
