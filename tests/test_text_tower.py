"""The text tower every peer builds: the same weights in every process, and pretrained towers on any preset."""

from __future__ import annotations

import sys

import pytest
import torch

from expert.presets import get_preset
from expert.text import TextEncoder
from protocol.errors import ParisError
from tests import zygote
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
    # a fork of the test zygote reseeds torch's global generator from the OS, as a new interpreter starts unseeded
    r = zygote.run_to_end([sys.executable, "-c", _HASH, preset, model], cwd=ROOT, env=ENV, timeout=300)
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


def test_a_pretrained_tower_is_computed_once_at_run_init_and_never_loaded_to_train(synth_dir, tmp_path):
    """`--text-weights` (a pretrained open_clip tower, here ViT-S-32 with random weights saved as a file): like a
    `transformers` encoder (tests/test_text_encoders.py), `run init`'s encoding stores every caption's states
    with the data; trainers, their validation and what a volunteer downloads go without the weights. A random
    tower (no weights: small, rebuilt from its seed) is still computed by each trainer."""

    from expert.assets import asset_of
    from expert.clip_score import ClipScorer
    from expert.latent_data import encode_dataset, matches
    from expert.run_init import init_run
    from node.assets import preset_assets
    from tests.stored_text import check_stored_states

    weights = tmp_path / "open_clip.pt"
    torch.save(ClipScorer.random_init("ViT-S-32", seed=1).model.state_dict(), weights)
    preset = get_preset("tiny", text_model="ViT-S-32", text_weights=asset_of(weights))
    assert preset.text.stored and not get_preset("tiny").text.stored
    assert "text-encoder weights" in preset_assets(preset)  # a sampler fetches it, a trainer or verifier not
    assert "text-encoder weights" not in preset_assets(preset, sampling=False)
    spec = init_run(synth_dir, 2, preset=preset, seed=0, name="open-clip")
    manifest = encode_dataset(synth_dir, spec.preset, tmp_path / "enc")
    assert manifest.text is not None and manifest.latents is None
    assert manifest.text.encoder == asset_of(weights).cid and manifest.text.shape == (32, 384)
    assert matches(manifest, spec.preset, spec.data.data_id)
    check_stored_states(spec, tmp_path / "enc", TextEncoder)
