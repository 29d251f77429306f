"""A cluster larger than the memory budget trains: its shards stay on disk and each batch reads its rows
(expert.shards.open_dataset → expert.shard_rows.LazyRows). The trainer runs in its own process, whose peak
resident set (VmHWM) above what it held before opening the data is measured against the budget."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from expert.shards import ClipBatch, ShardWriter, tokenize
from tests.daemons import ENV, ROOT

pytestmark = pytest.mark.slow

CLIPS, PER_SHARD, BUDGET_MB = 12_000, 500, 128  # 12k clips of 16×32×32×3 frames: 590 MB of shards

TRAIN = """
import json, sys
import torch
torch.set_num_threads(1)
from expert.presets import get_preset
from expert.shards import open_dataset
from expert.train_expert import ExpertTrainer

def status_mb(field):  # VmHWM, not ru_maxrss: that one keeps the parent's size from before the fork + exec
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

ExpertTrainer(get_preset("tiny"), open_dataset(sys.argv[1])[1].select(range(8))).train(2)  # warm: kernels
before = status_mb("VmRSS")
_, clips = open_dataset(sys.argv[1])
trainer = ExpertTrainer(get_preset("tiny"), clips)
trainer.train(40)
peak = status_mb("VmHWM")
print(json.dumps({"before_mb": before, "peak_mb": peak, "data_mb": clips.frames.nbytes / 2**20,
                  "step": trainer.step, "lazy": clips.lazy}))
"""


def _write_large(out):
    rng = np.random.default_rng(0)
    captions = ["a red circle moving left on a blue background", "a green square moving up on a black background"]
    tokens = tokenize(captions)
    writer = ShardWriter(out, clips_per_shard=PER_SHARD)
    for start in range(0, CLIPS, PER_SHARD):
        n = min(PER_SHARD, CLIPS - start)
        frames = rng.integers(0, 256, (n, 16, 32, 32, 3), dtype=np.uint8)
        writer.write(ClipBatch(frames, np.tile(tokens, (n // 2 + 1, 1))[:n], [captions[i % 2] for i in range(n)]))
    return writer.finish(source="synthetic", frames=16, height=32, width=32, fps=8.0)


def test_a_cluster_larger_than_the_memory_budget_trains_within_it(tmp_path):
    manifest = _write_large(tmp_path / "big")
    data_mb = sum(s.bytes for s in manifest.shards) / 2**20
    assert data_mb > 3 * BUDGET_MB
    r = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "big")], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"shards {data_mb:.0f} MB; resident before opening {got['before_mb']:.0f} MB, peak {got['peak_mb']:.0f} MB "
          f"(+{got['peak_mb'] - got['before_mb']:.0f} MB, budget +{BUDGET_MB} MB)")
    assert got["lazy"] and got["step"] == 40 and got["data_mb"] > 3 * BUDGET_MB
    assert got["peak_mb"] - got["before_mb"] < BUDGET_MB, got
