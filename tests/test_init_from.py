"""`run init --init-from DIR`: every expert starts from a diffusers WanTransformer3DModel folder (its shape from
its config.json, its weights by CID), and a verifier rebuilds the same initialisation (issue 27 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

import expert.assets as assets
from expert.assets import asset_of
from expert.checkpoint import read_meta, resolve_checkpoint
from expert.presets import get_preset
from expert.run_init import init_run
from expert.train_expert import ExpertTrainer, trainer_for_run
from expert.verify import replay
from protocol.errors import ParisError


def save_wan(folder: Path, *, seed: int = 3, in_channels: int = 3, text_dim: int = 64) -> Path:
    """A tiny Wan transformer as an open model would ship it (tiny preset's frames and text width)."""
    torch.manual_seed(seed)
    WanTransformer3DModel(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16,
                          in_channels=in_channels, out_channels=in_channels, text_dim=text_dim, freq_dim=32,
                          ffn_dim=96, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                          rope_max_seq_len=1024).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    return save_wan(tmp_path_factory.mktemp("wan") / "transformer")


def _start(folder: Path):
    return asset_of(folder), folder


def test_every_expert_starts_from_the_folder_and_a_verifier_rebuilds_it(synth_dir, wan, tmp_path):
    preset = get_preset("tiny", init_from=_start(wan))
    b = preset.backbone
    assert (b.patch_size, b.num_layers, b.num_heads, b.head_dim, b.ffn_dim, b.freq_dim) == ((1, 4, 4), 2, 2, 16, 96,
                                                                                             32)
    assert b.text_conditioning == "wan" and b.prediction is None and b.init_from.cid == asset_of(wan).cid
    spec = init_run(synth_dir, 2, preset=preset, seed=0, name="init")
    other = get_preset("tiny", init_from=_start(save_wan(tmp_path / "other", seed=4)))
    assert init_run(synth_dir, 2, preset=other, seed=0, name="init").run_id != spec.run_id  # commits to it
    weights = load_file(wan / "diffusion_pytorch_model.safetensors")
    for k in range(2):
        trainer = trainer_for_run(spec, k)
        for state in (trainer.model.state_dict(), trainer.ema.state_dict()):
            assert set(state) == set(weights) and all(torch.equal(state[n], weights[n]) for n in weights)
    trainer.train(2, checkpoint_dir=tmp_path / "ck")  # cluster 1, two steps from the folder's weights
    child = resolve_checkpoint(tmp_path / "ck")
    assert read_meta(child).parent is None  # its lineage starts at the initialisation
    verifier = ExpertTrainer(spec.preset, trainer.clips, seed=spec.seed, run_id=spec.run_id, cluster=1)
    assert all(torch.equal(v, weights[n]) for n, v in verifier.model.state_dict().items())
    report = replay(lambda: trainer_for_run(spec, 1), None, child, read_meta(child), tolerance=1e-4)
    assert report.ok and report.exact, report.reason  # replayed from the rebuilt initialisation, bit for bit

    with assets._lock:  # a machine without the folder cannot build the start: a one-line error naming it
        saved = dict(assets._paths)
        assets._paths.clear()
    try:
        with pytest.raises(ParisError, match=r"initial weights transformer .* is not on this machine"):
            trainer_for_run(spec, 0)
    finally:
        with assets._lock:
            assets._paths.update(saved)


def test_a_folder_that_cannot_start_the_experts_is_refused_in_one_line(wan, tmp_path):
    with pytest.raises(ParisError, match="denoises 4 channels"):
        get_preset("tiny", init_from=_start(save_wan(tmp_path / "latent", in_channels=4)))
    with pytest.raises(ParisError, match="reads text states of width 32"):
        get_preset("tiny", init_from=_start(save_wan(tmp_path / "narrow", text_dim=32)))
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ParisError, match="holds a AutoencoderKLWan, not a WanTransformer3DModel"):
        get_preset("tiny", init_from=_start(vae))
    misfit = save_wan(tmp_path / "misfit")  # a config that says more layers than the weights hold
    config = json.loads((misfit / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    preset = get_preset("tiny", init_from=_start(misfit))
    from expert.init_weights import load_initial_weights

    with pytest.raises(ParisError, match="do not fit their config"):
        load_initial_weights(WanTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")}
                                                   | {"num_layers": 3}), preset.backbone.init_from)
