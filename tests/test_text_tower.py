"""The text tower every peer builds: the same weights in every process, and pretrained towers on any preset."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from expert.presets import get_preset
from expert.text import TextEncoder
from protocol.errors import ParisError
from tests.daemons import ENV, ROOT

# Build the preset's tower in a fresh process and print a hash of its state dict.
_HASH = """
import hashlib, sys, torch
from expert.presets import get_preset
from expert.text import TextEncoder
text = TextEncoder(get_preset(sys.argv[1], text_model=sys.argv[2] or None).text)
h = hashlib.sha256()
for k, v in sorted(text.state_dict().items()):
    h.update(k.encode()); h.update(v.float().numpy().tobytes())
print(h.hexdigest())
"""


def _tower_hash(preset: str, model: str = "") -> str:
    r = subprocess.run([sys.executable, "-c", _HASH, preset, model], cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # two fresh processes each build an open_clip ViT-B-32 (about 10 s together)
def test_the_random_open_clip_tower_is_the_same_in_every_process():
    """base/large build open_clip's ViT-B-32 with random init when no --text-weights are given: open_clip
    draws it from the global RNG, so unseeded every process (trainer, verifier, sampler) had another tower."""
    first, second = _tower_hash("tiny", "ViT-B-32"), _tower_hash("tiny", "ViT-B-32")
    assert first == second and len(first) == 64


def test_building_the_tower_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    TextEncoder(get_preset("tiny").text)
    assert torch.equal(torch.rand(4), expected)


def test_every_preset_takes_an_open_clip_text_model():
    tiny = get_preset("tiny", text_model="ViT-L-14")  # the architecture Paris 1.0 conditioned on
    assert (tiny.text.model_name, tiny.text.width, tiny.text.layers, tiny.text.heads) == ("ViT-L-14", 768, 12, 12)
    assert tiny.text.context_length == 32 and tiny.backbone == get_preset("tiny").backbone
    assert get_preset("small", text_model="ViT-B-32").text.width == 512
    with pytest.raises(ParisError, match="'not-a-model' is not an open_clip architecture"):
        get_preset("tiny", text_model="not-a-model")
