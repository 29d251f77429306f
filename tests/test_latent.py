"""The latent-space path (GPU presets) with a tiny random-init video VAE saved to a local folder."""

import pytest
import torch

from expert.backbone import WanVaeCodec
from expert.presets import get_preset
from expert.sampling import load_expert, sample
from expert.train import ExpertTrainer
from protocol.errors import ParisError
from protocol.model import BackboneConfig

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
    return get_preset("tiny").model_copy(update={"name": "tiny-latent", "backbone": BackboneConfig(
        space="latent", vae_path=str(vae_dir), in_channels=4, frames=9, height=32, width=32, patch_size=(1, 2, 2),
        num_layers=1, num_heads=2, head_dim=16, ffn_dim=64, freq_dim=32)})


def test_latent_expert_trains_and_samples(vae_dir, synth_dir, tmp_path):
    from expert.shards import load_dataset

    preset = _tiny_latent(vae_dir)
    _, clips = load_dataset(synth_dir)
    trainer = ExpertTrainer(preset, clips.select(range(16)))
    assert isinstance(trainer.codec, WanVaeCodec)
    assert trainer.codec.latent_shape() == (4, 5, 16, 16)
    trainer.train(2, checkpoint_dir=tmp_path)
    expert = load_expert(tmp_path)
    video = sample(expert, "a red circle", steps=2, guidance=2.0)
    assert video.shape == (1, 9, 32, 32, 3)


def test_latent_preset_needs_a_vae():
    with pytest.raises(ParisError, match="--vae PATH"):
        get_preset("base")
    with pytest.raises(ParisError, match="cannot load the video VAE"):
        WanVaeCodec(BackboneConfig(space="latent", vae_path="/nonexistent/vae", in_channels=16, frames=9,
                                   height=32, width=32, num_layers=1, num_heads=1, head_dim=16, ffn_dim=32))


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
