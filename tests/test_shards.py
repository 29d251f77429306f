import json
import shutil

import pytest

from expert.shards import load_dataset
from protocol.errors import IntegrityError


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_loads_and_verifies(synth_dir):
    manifest, clips = load_dataset(synth_dir)
    assert len(clips) == manifest.total_clips == 240
    assert clips.frames.shape == (240, 16, 32, 32, 3)
    assert clips.attributes.shape == (240, 5)
    assert len(clips.captions) == 240


def test_flipped_byte_names_the_bad_shard(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    shard = d / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"shard-00001\.safetensors is corrupt"):
        load_dataset(d)


def test_missing_shard_and_bad_manifest(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    (d / "shard-00002.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"shard-00002\.safetensors is missing"):
        load_dataset(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="malformed"):
        load_dataset(d)
    with pytest.raises(IntegrityError, match="not a paris-node data set"):
        load_dataset(tmp_path / "nothing")


def test_manifest_that_lies_about_counts_is_refused(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["total_clips"] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="inconsistent"):
        load_dataset(d)
