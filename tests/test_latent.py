"""The latent-space path (GPU presets) with a tiny random-init video VAE saved to a local folder."""

import numpy as np
import pytest
import torch

from expert.assets import asset_of
from expert.presets import get_preset
from expert.sampling import load_expert, sample
from expert.train_expert import ExpertTrainer
from expert.vae import VaeCodec
from protocol.errors import ParisError
from protocol.model import Asset, BackboneConfig
from protocol.run import ValidationSpec

pytestmark = pytest.mark.slow  # builds a VAE and trains through it


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path)
    return path


def _tiny_latent(vae_dir):
    return get_preset("tiny-latent", vae=asset_of(vae_dir))


def test_latent_expert_trains_and_samples(vae_dir, synth_dir, tmp_path):
    from expert.shards import load_dataset

    preset = _tiny_latent(vae_dir)
    _, clips = load_dataset(synth_dir)
    trainer = ExpertTrainer(preset, clips.select(range(16)))
    assert isinstance(trainer.codec, VaeCodec)
    assert trainer.codec.latent_shape() == (4, 5, 16, 16)
    trainer.train(2, checkpoint_dir=tmp_path)
    expert = load_expert(tmp_path)
    video = sample(expert, "a red circle", steps=2, guidance=2.0)
    assert video.shape == (1, 9, 32, 32, 3)


def test_latent_preset_needs_a_vae(tmp_path):
    with pytest.raises(ParisError, match="--vae DIR"):
        get_preset("base")
    with pytest.raises(ParisError, match="--vae DIR"):
        get_preset("tiny-latent")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(ParisError, match="holds a None, not a diffusers VAE"):  # an asset that is not a VAE
        VaeCodec(BackboneConfig(space="latent", vae=asset_of(tmp_path / "vae"), in_channels=16, frames=9,
                                   height=32, width=32, num_layers=1, num_heads=1, head_dim=16, ffn_dim=32))
    # an asset named by CID that this machine does not hold: a one-line error naming it
    unknown = Asset(cid="bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", bytes=10, name="vae")
    with pytest.raises(ParisError, match=r"the video VAE vae \(bafkrei.*\) is not on this machine"):
        VaeCodec(BackboneConfig(space="latent", vae=unknown, in_channels=4, frames=9, height=32, width=32,
                                   num_layers=1, num_heads=1, head_dim=16, ffn_dim=32))


def test_the_preset_names_the_vae_by_cid_never_by_path(vae_dir, tmp_path):
    import shutil

    preset = _tiny_latent(vae_dir)
    moved = tmp_path / "elsewhere" / "vae"
    shutil.copytree(vae_dir, moved)
    assert get_preset("tiny-latent", vae=asset_of(moved)) == preset  # same bytes, another path: same preset
    assert str(vae_dir) not in preset.model_dump_json() and preset.backbone.vae.cid.startswith("b")
    (moved / "config.json").write_text((moved / "config.json").read_text() + " ")
    assert asset_of(moved).cid != preset.backbone.vae.cid  # other bytes: another CID (so another run id)


def test_a_latent_data_set_is_encoded_once_and_trains_without_the_vae(vae_dir, synth_dir, tmp_path, monkeypatch):
    from expert.latent_data import encode_dataset, matches
    from expert.shards import load_dataset
    from expert.vae import VaeCodec
    from protocol.data import DataManifest

    preset = _tiny_latent(vae_dir)
    manifest = encode_dataset(synth_dir, preset, tmp_path / "latents")
    source, clips = load_dataset(synth_dir)
    assert manifest.latents.shape == (4, 5, 16, 16) and manifest.total_clips == source.total_clips
    assert matches(DataManifest.load(tmp_path / "latents"), preset, source.data_id)
    _, lat = load_dataset(tmp_path / "latents")
    assert lat.frames is None and lat.latents.dtype == np.float16 and lat.captions == clips.captions
    one = VaeCodec(preset.backbone).encode(torch.from_numpy(clips.frames[3:4]))
    assert torch.allclose(torch.from_numpy(lat.latents[3:4]).float(), one, atol=2e-2)  # float16 of the same

    def no_vae(*args, **kwargs):
        raise AssertionError("a trainer fed latents built the VAE")

    monkeypatch.setattr("expert.vae.VaeCodec.__init__", no_vae)
    trainer = ExpertTrainer(preset, lat.select(range(16)), holdout=lat.select(range(16, 24)),
                            validation=ValidationSpec(holdout=((),)))
    trainer.train(2)
    assert trainer.step == 2 and np.isfinite(trainer.validation_loss())
    with pytest.raises(ParisError, match="latents of shape"):  # latents are refused by a pixel preset
        ExpertTrainer(get_preset("tiny"), lat.select(range(4)))


def test_a_latent_shard_is_checked_against_its_manifest(vae_dir, synth_dir, tmp_path):
    from expert.latent_data import encode_dataset
    from expert.shards import load_dataset
    from protocol.data import MANIFEST_NAME, DataManifest
    from protocol.errors import IntegrityError

    encode_dataset(synth_dir, _tiny_latent(vae_dir), tmp_path / "latents")
    m = DataManifest.load(tmp_path / "latents")
    lied = m.model_copy(update={"latents": m.latents.model_copy(update={"shape": (4, 5, 8, 8)})})
    (tmp_path / "latents" / MANIFEST_NAME).write_bytes(lied.to_bytes())
    with pytest.raises(IntegrityError, match=r"holds latents \(4, 5, 16, 16\), the manifest says latents"):
        load_dataset(tmp_path / "latents")


def test_a_latent_trainer_encodes_each_clip_once_and_steps_without_the_vae(vae_dir, synth_dir, monkeypatch):
    from expert.shards import load_dataset

    _, clips = load_dataset(synth_dir)
    some = clips.select(range(12))
    trainer = ExpertTrainer(_tiny_latent(vae_dir), some)
    assert trainer.frames is None and tuple(trainer.latents.shape) == (12, 4, 5, 16, 16)  # frames let go
    one = trainer.codec.encode(torch.from_numpy(some.frames[5:6]))
    assert torch.allclose(trainer.latents[5:6], one, atol=1e-5)  # what encoding that clip alone gives

    def no_vae(*args, **kwargs):
        raise AssertionError("a VAE forward in a training step")

    monkeypatch.setattr(trainer.codec.vae, "encode", no_vae)
    trainer.train(2)
    assert trainer.step == 2 and trainer.loss_ema is not None
