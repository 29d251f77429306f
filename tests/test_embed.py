"""The networks that embed clips for clustering: DINOv2 (a tiny random-init `Dinov2Model` saved with
`save_pretrained`, loaded by path as a user's would be) and open_clip's image tower, batched on a device and
streamed shard by shard, with the same numbers whatever the batch size and as the one-call path before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from expert.assets import asset_of
from expert.embed import Dinov2Image, OpenClipImage
from expert.run_init import embed_dataset, init_run, make_embedder
from expert.shards import load_dataset
from protocol.data import DataManifest
from protocol.errors import ParisError


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = tmp_path_factory.mktemp("dinov2") / "dinov2-tiny"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def test_dinov2_embeds_clips_the_same_in_any_batch_and_shard_by_shard(dinov2_dir, synth_dir):
    manifest, clips = load_dataset(synth_dir)  # 240 clips in 3 shards of up to 100
    frames = clips.frames[:40]
    whole = Dinov2Image(dinov2_dir, batch=1000)(frames, [])
    assert whole.shape == (40, 32) and np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    assert np.abs(Dinov2Image(dinov2_dir, batch=7)(frames, []) - whole).max() < 1e-5
    streamed, attributes = embed_dataset(synth_dir, manifest, Dinov2Image(dinov2_dir, batch=64))
    assert streamed.shape == (240, 32) and np.abs(streamed[:40] - whole).max() < 1e-5
    assert (attributes == clips.attributes).all()
    assert len({tuple(np.round(r, 3)) for r in whole}) > 30  # clips differ, so do their features


def test_a_run_clustered_with_dinov2_names_its_weights(dinov2_dir, synth_dir):
    weights = asset_of(dinov2_dir)
    seen: list[int] = []
    spec = init_run(synth_dir, 2, preset_name="tiny", dinov2=weights, on_progress=seen.append)
    assert spec.embedding.method == "dinov2-image" and spec.embedding.weights == weights
    assert spec.embedding.dim == 32 and "Dinov2Model 2×32" in spec.embedding.detail
    assert sum(seen) == 240 and len(seen) == 3  # one step per shard
    assert min(spec.balance.sizes) > 0
    with pytest.raises(ParisError, match="give --clip-weights or --dinov2, not both"):
        make_embedder(DataManifest.load(synth_dir), clip_weights=weights, dinov2=weights)


def test_dinov2_weights_that_do_not_fit_their_config_are_refused(dinov2_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dinov2_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ParisError, match=r"cannot load DINOv2 from .*bad: its weights do not fit") as e:
        Dinov2Image(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ParisError, match="cannot load DINOv2"):
        Dinov2Image(tmp_path / "nothing")


def _open_clip_as_before(frames: np.ndarray, model: torch.nn.Module) -> np.ndarray:
    """The open_clip embedding as `run init` computed it before batching on a device (copied from it)."""
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    idx = np.linspace(0, frames.shape[1] - 1, 3).round().astype(int)
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), 64):
            x = torch.from_numpy(frames[i : i + 64][:, idx]).float().div(255)
            b, f = x.shape[:2]
            x = x.reshape(b * f, *x.shape[2:]).permute(0, 3, 1, 2)
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            feats = model.encode_image((x - mean) / std).float().reshape(b, f, -1).mean(1)
            out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
    return np.concatenate(out)


def test_open_clip_batched_on_a_device_gives_what_it_gave_before(synth_dir, tmp_path):
    from expert.clip_score import ClipScorer

    torch.save(ClipScorer.random_init("ViT-S-32", seed=1).model.state_dict(), tmp_path / "clip.pt")
    _, clips = load_dataset(synth_dir)
    frames = clips.frames[:6]
    tower = OpenClipImage("ViT-S-32", str(tmp_path / "clip.pt"), batch=5)
    before = _open_clip_as_before(frames, tower.model)
    assert np.abs(tower(frames, []) - before).max() < 1e-5
    assert tower.method == "open_clip-image" and tower.detail == "ViT-S-32, mean of 3 frames, L2-normalised"
