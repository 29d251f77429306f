import numpy as np
import pytest

from expert.cluster import balance_report, cluster, nearest
from expert.embed import SHAPES_V1_GROUPS, embed_shapes_v1
from expert.shards import load_dataset
from protocol.errors import ParisError
from protocol.run import RunSpec


def test_clusters_mean_something_on_synthetic_data(synth_dir):
    manifest, clips = load_dataset(synth_dir)
    emb = embed_shapes_v1(clips.frames, clips.captions)
    result = cluster(emb, 3, seed=0, groups=SHAPES_V1_GROUPS)
    report = balance_report(result.assignments, 3, clips.attributes, manifest.attributes)
    best = max(report.nmi, key=report.nmi.get)
    # far above chance: a random partition has NMI ≈ 0 and purity ≈ the majority share
    assert report.nmi[best] > 0.6
    assert report.purity[best] > report.purity_chance[best] + 0.3
    assert sum(report.sizes) == 240 and report.smallest > 0


def test_two_stage_clustering_assigns_every_clip_to_its_nearest_coarse_centroid():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 6
    x = np.concatenate([c + rng.normal(size=(300, 8)) for c in centres])
    result = cluster(x, 4, seed=0, two_stage_min=100, fine_max=64)
    assert result.fine == 64
    z = (x - result.mean) / result.scale
    assert (nearest(z, result.centroids) == result.assignments).all()
    truth = np.repeat(np.arange(4), 300)
    report = balance_report(result.assignments, 4)
    assert report.sizes == (300, 300, 300, 300)
    # each true blob lands in exactly one cluster
    assert all(len(set(result.assignments[truth == k])) == 1 for k in range(4))


def test_too_many_clusters_is_a_clear_error():
    with pytest.raises(ParisError, match="cannot make 10 clusters from 5 clips"):
        cluster(np.zeros((5, 3)), 10)


def test_run_spec_round_trip_and_identity(tiny_run, tmp_path):
    spec, path = tiny_run
    loaded = RunSpec.load(path)
    assert loaded == spec and loaded.run_id == spec.run_id
    moved = spec.model_copy(update={"data_hint": "/elsewhere"})
    assert moved.run_id == spec.run_id  # the local data path is not part of the identity
    assert sorted(spec.cluster_clips(0) + spec.cluster_clips(1)) == list(range(240))
    with pytest.raises(ParisError, match="cluster 5 does not exist"):
        spec.cluster_clips(5)


def test_malformed_run_spec_is_refused(tiny_run, tmp_path):
    _, path = tiny_run
    bad = tmp_path / "bad.json"
    text = path.read_text().replace('"num_clusters":2', '"num_clusters":3')
    bad.write_text(text)
    with pytest.raises(ParisError, match="malformed"):
        RunSpec.load(bad)


def test_run_id_ignores_absent_optional_fields(tiny_run):
    from protocol.canonical import content_id

    spec, _ = tiny_run
    # None-valued fields (for example preset.router on an expert) are not part of the identity, so a schema that
    # later gains an optional field still gives old specs their old ids
    dumped = spec.model_dump(mode="json", exclude={"data_hint"}, exclude_none=True)
    assert "router" not in dumped["preset"]
    assert spec.run_id == content_id(dumped, prefix="run", digits=32)
    assert content_id(spec.model_copy(update={"data_hint": None}), prefix="run", exclude={"data_hint"},
                      digits=32) == spec.run_id


def test_run_id_commits_to_its_creator(tiny_run, tmp_path):
    from protocol.run import RunSpec
    from swarm.identity import load_identity

    spec, _ = tiny_run
    a, b = (load_identity(tmp_path / n).public_key_bytes.decode() for n in ("a", "b"))
    ids = {RunSpec.model_validate({**spec.model_dump(), "creator": c}).run_id for c in (a, b, None)}
    assert len(ids) == 3 and all(len(i) == len("run-") + 32 for i in ids)


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_new_clips_are_assigned_as_run_init_assigned_the_data(tiny_run, synth_dir):
    """`assign_clips` (embed, standardise with the run's statistics, nearest centroid) reproduces the run's
    own assignments on its data, and `prompts_of_cluster` keeps only clips it puts in that cluster."""
    from expert.evaluate import EVAL_SEED, prompts_of_cluster
    from expert.run_init import assign_clips
    from expert.synth import render_clip

    spec, _ = tiny_run
    _, clips = load_dataset(synth_dir)
    labels = assign_clips(spec, clips.frames, clips.captions)
    assert (labels == np.asarray(spec.assignments)).mean() > 0.98  # rounding of the stored centroids only
    real, present, captions = prompts_of_cluster(spec, 1, 6, search=400)
    assert len(real) == len(present) == len(captions) == 6
    d = spec.data
    own = [render_clip(EVAL_SEED, i, d.frames, d.height, d.width) for i in range(400)]
    in_one = {s.caption for (v, s), k in zip(own, assign_clips(spec, np.stack([v for v, _ in own]),
                                                               [s.caption for _, s in own]), strict=True) if k == 1}
    assert set(captions) <= in_one
    with pytest.raises(ParisError, match="the run's data is"):
        assign_clips(spec, clips.frames[:, :4], clips.captions)
