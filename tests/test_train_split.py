"""The router's preset rules stay pure: `fetch`, the bundle's size bounds and verifiers read a run's router preset
without importing torch's training stack (issue 25, item 4)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from expert.presets import get_preset
from expert.router_preset import router_preset, stratified_sample
import numpy as np
p = router_preset(get_preset("tiny"), 3, data_sizes=[5, 3, 2])
rows = stratified_sample(np.array([0, 0, 0, 1, 2, 2]), 2)
pure = sorted(m for m in sys.modules if m == "torch" or m.startswith("expert."))
print(json.dumps({"name": p.name, "rows": rows.tolist(), "pure": pure}))
"""


def test_router_preset_rules_import_neither_torch_nor_the_trainers():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["name"] == "tiny-router-light" and len(got["rows"]) == 5
    assert got["pure"] == ["expert.presets", "expert.router_preset"]  # no torch, no trainer
