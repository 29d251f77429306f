import json
import shutil

import numpy as np
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


def test_an_opened_data_set_reads_frames_from_disk_only_when_asked(synth_dir):
    import numpy as np

    from expert.shard_rows import LazyRows
    from expert.shards import ClipBatch, open_dataset

    _, eager = load_dataset(synth_dir)
    _, lazy = open_dataset(synth_dir)
    assert isinstance(lazy.frames, LazyRows) and lazy.lazy and not eager.lazy
    assert lazy.frames.shape == eager.frames.shape and lazy.captions == eager.captions
    assert np.array_equal(lazy.tokens, eager.tokens) and np.array_equal(lazy.attributes, eager.attributes)
    pick = np.array([239, 0, 101, 100, 99, 5])  # across shard boundaries (100 clips a shard), in this order
    assert np.array_equal(lazy.frames[pick], eager.frames[pick])
    assert np.array_equal(lazy.frames[7], eager.frames[7]) and np.array_equal(lazy.frames[3:9], eager.frames[3:9])
    # select and concat stay lazy and keep the order
    sub = ClipBatch.concat([lazy.select([5, 200]), lazy.select([150])])
    assert isinstance(sub.frames, LazyRows) and sub.captions == [eager.captions[i] for i in (5, 200, 150)]
    assert np.array_equal(np.asarray(sub.frames), eager.frames[[5, 200, 150]])


def test_only_the_shards_holding_the_clips_asked_for_are_read(synth_dir, tmp_path):
    import numpy as np

    from expert.shards import open_dataset, shards_holding

    manifest, eager = load_dataset(synth_dir)
    assert shards_holding(manifest, [3, 250 - 11, 120]) == [0, 1, 2]
    assert shards_holding(manifest, [120, 199]) == [1]
    d = _copy(synth_dir, tmp_path)
    (d / "shard-00000.safetensors").unlink()  # absent, and not needed
    (d / "shard-00002.safetensors").unlink()
    _, some = open_dataset(d, only=[150, 120, 199])
    assert np.array_equal(np.asarray(some.frames), eager.frames[[150, 120, 199]])
    assert some.captions == [eager.captions[i] for i in (150, 120, 199)]
    with pytest.raises(IntegrityError, match=r"shard-00000\.safetensors is missing"):
        open_dataset(d, only=[3])
    with pytest.raises(IntegrityError, match="not in a data set of 240 clips"):
        open_dataset(d, only=[240])


def test_an_opened_data_set_verifies_every_shard_first(synth_dir, tmp_path):
    from expert.shards import open_dataset

    d = _copy(synth_dir, tmp_path)
    shard = d / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x01  # a frame byte: the rows would still parse
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"shard-00001\.safetensors is corrupt"):
        open_dataset(d)


def test_shard_bytes_do_not_depend_on_metadata_order():
    """safetensors writes metadata from a Rust HashMap (a new order per map): keys are sorted afterwards, so the
    same clips always give the same shard hash, and spans survive the round trip."""
    from expert.shards import ClipBatch, decode_shard, encode_shard

    frames = np.zeros((2, 2, 8, 8, 3), dtype=np.uint8)
    batch = ClipBatch(frames, np.zeros((2, 4), dtype=np.int32), ["a", "b"], names=["x.mp4", "y.mp4"],
                      spans=[(0.5, 2.5), (1.0, 3.0)])
    encoded = {encode_shard(batch) for _ in range(20)}
    assert len(encoded) == 1
    back = decode_shard(encoded.pop(), label="s")
    assert back.names == ["x.mp4", "y.mp4"] and back.spans == [(0.5, 2.5), (1.0, 3.0)]
