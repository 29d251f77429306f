"""benchmarks/shape_drawing.py runs end to end at a toy size, and trains only on the shapes it names."""

import json
import sys
from pathlib import Path

import pytest

from expert.shards import load_dataset
from expert.synth import SHAPES
from expert.synth_classifier import train_judge
from tests import zygote
from tests.zygote import ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_the_shape_drawing_benchmark_trains_on_the_named_shapes_and_reports_each(tmp_path):
    train_judge(clips=64, steps=2, heldout=16).save(tmp_path / "judge")  # the real one takes half an hour
    work = tmp_path / "work"
    r = zygote.run_to_end([sys.executable, "benchmarks/shape_drawing.py", "--shapes", "cross,circle", "--steps", "2",
                           "--clips", "150", "--n", "2", "--work", str(work), "--judge", str(tmp_path / "judge"),
                           "--strip", str(tmp_path / "strip.png"), "--threads", "1", "--json"],
                          cwd=ROOT, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["shapes"] == ["cross", "circle"] and out["steps"] == 2
    for shape, row in out["per_shape"].items():
        assert shape in row["prompt"]
        for key in ("guidance 4", "guidance 1"):
            assert 0 <= row[key]["drawn"] <= 1 and sum(row[key]["judge_sees"].values()) == 2
        assert 0 <= row["judge_on_real_clips"] <= 1
    manifest, clips = load_dataset(work / "data")
    assert manifest.total_clips == 150 and manifest.generator["only_single"] == "cross,circle"
    shapes, objects = clips.attributes[:, 0], clips.attributes[:, 4]
    assert set(shapes.tolist()) == {SHAPES.index("cross"), SHAPES.index("circle")} and not objects.any()
    assert (tmp_path / "strip.png").is_file()
