"""Any diffusers VAE as a run's codec: each class built small with random init, saved with `save_pretrained`,
read back through expert.vae (class from its config, compression measured on fake tensors)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from expert.assets import asset_of
from expert.vae import VaeCodec, probe_vae
from protocol.errors import ParisError
from protocol.model import BackboneConfig

FRAMES, SIZE = 9, 32


def _wan21():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[True], latents_mean=[0.5] * 4, latents_std=[2.0] * 4,
                            scale_factor_temporal=2, scale_factor_spatial=2)  # what diffusers' WanPipeline reads


def _wan22():  # Wan 2.2's VAE: residual blocks and a 2×2 patch in front (the patch is part of the compression)
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                            is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                            scale_factor_temporal=2, scale_factor_spatial=4)


def _ltx(channels: int = 4):
    from diffusers import AutoencoderKLLTXVideo

    return AutoencoderKLLTXVideo(latent_channels=channels, block_out_channels=(8, 16),
                                 decoder_block_out_channels=(8, 16), down_block_types=("LTXVideoDownBlock3D",) * 2,
                                 layers_per_block=(1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1), spatio_temporal_scaling=(True, False),
                                 decoder_spatio_temporal_scaling=(True, False), decoder_inject_noise=(False,) * 3,
                                 downsample_type=("conv", "conv"), upsample_residual=(False, False),
                                 upsample_factor=(1, 1), patch_size=2, scaling_factor=0.5)


def _ltx_091():  # LTX-Video 0.9.1 on: the decoder is conditioned on a timestep and injects noise
    from diffusers import AutoencoderKLLTXVideo

    return AutoencoderKLLTXVideo(latent_channels=4, block_out_channels=(8, 16),
                                 down_block_types=("LTXVideoDownBlock3D",) * 2, layers_per_block=(1, 1, 1),
                                 spatio_temporal_scaling=(True, False), downsample_type=("conv", "conv"), patch_size=2,
                                 decoder_block_out_channels=(16,), decoder_layers_per_block=(1, 1),
                                 decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(True, False),
                                 upsample_residual=(True,), upsample_factor=(2,), timestep_conditioning=True)


def _hunyuan():  # HunyuanVideo's VAE builds only with temporal compression 4 and spatial 8 (four blocks)
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                     norm_num_groups=4)


def _cogvideox():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(latent_channels=4, block_out_channels=(8, 16),
                                  down_block_types=("CogVideoXDownBlock3D",) * 2,
                                  up_block_types=("CogVideoXUpBlock3D",) * 2, layers_per_block=1, norm_num_groups=4,
                                  temporal_compression_ratio=2)


def _cosmos():
    from diffusers import AutoencoderKLCosmos

    return AutoencoderKLCosmos(latent_channels=4, encoder_block_out_channels=(8, 16),
                               decode_block_out_channels=(8, 16), attention_resolutions=(), resolution=32,
                               num_layers=1, patch_size=2, spatial_compression_ratio=4, temporal_compression_ratio=4,
                               latents_mean=None, latents_std=None)


def _sd():  # an image VAE: applied to each frame
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)


# class → (build, latent shape of a 9×32×32 clip, temporal and spatial compression, per frame)
CASES = {
    "AutoencoderKLWan": (_wan21, (4, 5, 16, 16), 2, 2, False),
    "AutoencoderKLWan-2.2": (_wan22, (4, 5, 8, 8), 2, 4, False),
    "AutoencoderKLLTXVideo": (_ltx, (4, 5, 8, 8), 2, 4, False),
    "AutoencoderKLLTXVideo-0.9.1": (_ltx_091, (4, 5, 8, 8), 2, 4, False),
    "AutoencoderKLHunyuanVideo": (_hunyuan, (4, 3, 4, 4), 4, 8, False),
    "AutoencoderKLCogVideoX": (_cogvideox, (4, 5, 16, 16), 2, 2, False),
    "AutoencoderKLCosmos": (_cosmos, (4, 5, 16, 16), 2, 2, False),
    "AutoencoderKL": (_sd, (4, 9, 16, 16), 1, 2, True),
}


def save_vae(build, path):
    torch.manual_seed(0)
    build().save_pretrained(path)
    return path


def backbone(vae_dir, channels: int = 4, frames: int = FRAMES, size: int = SIZE) -> BackboneConfig:
    return BackboneConfig(space="latent", vae=asset_of(vae_dir), in_channels=channels, frames=frames, height=size,
                          width=size, patch_size=(1, 2, 2), num_layers=1, num_heads=1, head_dim=16, ffn_dim=32)


@pytest.mark.parametrize("case", list(CASES))
def test_each_vae_class_round_trips_through_the_codec(case, tmp_path):
    build, latent, temporal, spatial, per_frame = CASES[case]
    vae_dir = save_vae(build, tmp_path / "vae")
    codec = VaeCodec(backbone(vae_dir))
    assert type(codec.vae).__name__ == case.split("-")[0]
    assert codec.latent_shape() == latent  # measured from the model, the patch of Wan 2.2 included
    assert (codec.t_down, codec.s_down, codec.shape.per_frame) == (temporal, spatial, per_frame)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    z = codec.encode(frames)
    assert tuple(z.shape) == (2, *latent) and torch.isfinite(z).all()
    video = codec.decode(z)
    assert video.shape == (2, FRAMES, SIZE, SIZE, 3) and video.dtype == torch.uint8
    if per_frame:  # frame by frame: a clip's frame encodes as that frame alone does
        alone = codec.encode(frames[:1, 4:5].expand(1, FRAMES, -1, -1, -1).contiguous())
        assert torch.allclose(z[:1, :, 4], alone[:, :, 0], atol=1e-5)


def test_the_vae_own_statistics_and_scaling_normalise_the_latents(tmp_path):
    wan = VaeCodec(backbone(save_vae(_wan21, tmp_path / "wan")))  # latents_mean 0.5, latents_std 2 in its config
    frames = torch.randint(0, 256, (1, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8)
    raw = wan.vae.encode(wan.to_model_frames(frames)).latent_dist.mode()
    assert torch.allclose(wan.encode(frames), (raw - 0.5) / 2.0, atol=1e-5)
    ltx = VaeCodec(backbone(save_vae(_ltx, tmp_path / "ltx")))  # scaling_factor 0.5; statistics are buffers
    raw = ltx.vae.encode(ltx.to_model_frames(frames)).latent_dist.mode()
    assert ltx.scale == 0.5 and torch.allclose(ltx.encode(frames), raw * 0.5, atol=1e-5)


def test_a_vae_that_does_not_fit_is_refused_in_one_line_before_loading(tmp_path):
    ltx = save_vae(_ltx, tmp_path / "ltx")
    (ltx / "diffusion_pytorch_model.safetensors").unlink()  # loading would fail otherwise: it must not get there
    with pytest.raises(ParisError, match=r"AutoencoderKLLTXVideo has 4 latent channels, the run's model expects 16"
                       ) as e:
        VaeCodec(backbone(ltx, channels=16))
    assert "\n" not in str(e.value)
    hunyuan = save_vae(_hunyuan, tmp_path / "hunyuan")
    (hunyuan / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ParisError, match=r"decode to .*: the run's frames or size do not fit its compression") as e:
        VaeCodec(backbone(hunyuan, frames=8))  # 4× in time: 8 frames do not come back as 8
    assert "\n" not in str(e.value)
    with pytest.raises(ParisError, match="cannot encode 9×33×33 clips"):  # Wan 2.2's 2×2 patch needs an even size
        probe_vae(save_vae(_wan22, tmp_path / "wan22"), FRAMES, 33, 33)
    other = tmp_path / "transformer"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(ParisError, match=r"holds a 'WanTransformer3DModel', not a diffusers VAE"):
        VaeCodec(backbone(other))
    with pytest.raises(ParisError, match="no such file or folder"):
        probe_vae(tmp_path / "nowhere", FRAMES, SIZE, SIZE)
    (other / "config.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(ParisError, match=r"holds a 'os.system', not a diffusers VAE"):
        probe_vae(other, FRAMES, SIZE, SIZE)


def test_weights_that_do_not_fit_the_config_are_refused_not_random(tmp_path):
    from safetensors.torch import load_file, save_file

    vae = save_vae(_wan21, tmp_path / "wan")
    weights = load_file(vae / "diffusion_pytorch_model.safetensors")
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, vae / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ParisError, match="its weights do not fit its config"):
        VaeCodec(backbone(vae))


def test_probing_a_full_size_vae_reads_no_weights_and_is_quick(tmp_path):
    from diffusers import AutoencoderKLWan

    (tmp_path / "wan").mkdir()
    with torch.device("meta"):  # diffusers' default AutoencoderKLWan is Wan 2.1's VAE
        config = {"_class_name": "AutoencoderKLWan", **AutoencoderKLWan().config}
    (tmp_path / "wan" / "config.json").write_text(json.dumps(config))  # a config alone, no weights file
    start = time.perf_counter()
    shape = probe_vae(tmp_path / "wan", 33, 256, 256)
    assert shape.latent == (16, 9, 32, 32) and (shape.temporal, shape.spatial) == (4, 8)  # Wan 2.1 at full size
    assert time.perf_counter() - start < 10



def test_a_vae_whose_config_misstates_its_compression_is_measured_and_warned_about(tmp_path, caplog):
    """diffusers' own pipelines (e.g. WanPipeline's scale_factor_temporal/spatial) size latents by what the VAE
    states; ours measures. A config that states other values — a small stand-in built with Wan's defaults (4×
    and 8×) but two blocks (2× and 2×) — works here and is named in a warning, since WanPipeline would fail."""
    import logging

    from diffusers import AutoencoderKLWan

    def misstated():
        return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                                temperal_downsample=[True])

    with caplog.at_level(logging.WARNING, logger="expert.vae"):
        shape = probe_vae(save_vae(misstated, tmp_path / "misstated"), FRAMES, SIZE, SIZE)
        probe_vae(save_vae(_wan21, tmp_path / "stated"), FRAMES, SIZE, SIZE)
    assert (shape.temporal, shape.spatial) == (2, 2)
    warned = [r.getMessage() for r in caplog.records if r.name == "expert.vae"]
    assert len(warned) == 2 and all("misstated" in w for w in warned)
    assert "states temporal compression 4 but compresses 2×" in warned[0]
    assert "states spatial compression 8 but compresses 2×" in warned[1]
