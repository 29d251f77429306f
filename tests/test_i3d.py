"""I3D for FVD: the pytorch-i3d layout, TF 'SAME' padding, preprocessing and strict loading from a local file.
A random-init network checks shapes and plumbing only (no pretrained weights are downloaded here)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from expert.i3d import I3DFeatures, InceptionI3d, MaxPoolSame, Unit3D, load_i3d_state, preprocess
from protocol.errors import ParisError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return InceptionI3d().eval()


def test_parameter_names_and_shapes_follow_pytorch_i3d(net):
    state = net.state_dict()
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["Conv3d_2c_3x3.conv3d.weight"].shape == (192, 64, 3, 3, 3)
    assert state["Mixed_4b.b1b.conv3d.weight"].shape == (208, 96, 3, 3, 3)
    assert state["Mixed_5c.b3b.bn.running_var"].shape == (128,)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert state["logits.conv3d.bias"].shape == (400,)
    assert "Conv3d_1a_7x7.conv3d.bias" not in state  # convolutions before a batch norm have no bias
    assert net.Conv3d_1a_7x7.bn.eps == pytest.approx(1e-3)


@pytest.mark.parametrize("size", [15, 16, 17])
def test_same_padding_gives_ceil_of_size_over_stride(size):
    x = torch.zeros(1, 3, size, size, size)
    assert Unit3D(3, 4, (7, 7, 7), (2, 2, 2))(x).shape[2:] == (-(-size // 2),) * 3
    assert MaxPoolSame((3, 3, 3), (2, 2, 2))(x).shape[2:] == (-(-size // 2),) * 3
    assert MaxPoolSame((3, 3, 3), (1, 1, 1))(x).shape[2:] == (size,) * 3


def test_preprocess_resizes_to_224_scales_to_unit_range_and_stretches_short_clips():
    videos = np.zeros((2, 8, 32, 32, 3), np.uint8)
    videos[:, :, :, :, 0] = 255
    videos[:, 4:] = 0
    x = preprocess(videos)
    assert x.shape == (2, 3, 16, 224, 224)
    # red channel of the first half is +1, green −1 (to float rounding: resampling's sums depend on threads)
    assert x[:, 0, :8].min() == pytest.approx(1.0, abs=1e-6) and x[:, 1].max() == pytest.approx(-1.0, abs=1e-6)
    assert torch.allclose(x[:, 0, 8:], torch.tensor(-1.0), atol=1e-6)  # frame i of 16 is frame i // 2 of 8


@pytest.mark.slow  # two forward passes of I3D at 16×224×224
def test_features_from_a_local_weights_file(net, tmp_path):
    """Round trip through both accepted formats: the same weights give the same 400 logits."""
    torch.save(net.state_dict(), tmp_path / "rgb_imagenet.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "i3d.safetensors")
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (2, 16, 32, 32, 3), dtype=np.uint8)
    a = I3DFeatures.from_file(tmp_path / "rgb_imagenet.pt", batch=1).features(videos)
    b = I3DFeatures.from_file(tmp_path / "i3d.safetensors").features(videos)
    assert a.shape == (2, 400) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # different videos, different features


def test_a_file_that_does_not_fit_is_refused(net, tmp_path):
    state = net.state_dict()
    del state["Mixed_4c.b0.conv3d.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ParisError, match="does not fit"):
        I3DFeatures.from_file(tmp_path / "broken.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor archive")
    with pytest.raises(ParisError, match="cannot read"):
        load_i3d_state(tmp_path / "junk.pt")
    with pytest.raises(ParisError, match="not found"):
        load_i3d_state(tmp_path / "missing.pt")
