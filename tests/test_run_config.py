"""The run config file: validated (unknown keys and bad values refused in one line), every field documented,
presets as its named defaults, recorded in the run spec (so the run id commits to it), checked against the
data's clips; a non-square config-made run trains and its intervals replay bit for bit."""

from __future__ import annotations

import pytest

from expert.presets import check_latent_patch, configure, effective_config, get_preset
from expert.run_init import check_clip_fit, init_run
from expert.synth_dataset import write_synthetic
from protocol.errors import ParisError
from protocol.run_config import RunConfig, load_run_config

NON_SQUARE = """
preset = "tiny"
name = "wide"
clusters = 2
seed = 3

[video]
frames = 8
height = 24
width = 32
fps = 4

[model]
layers = 2
heads = 2
head_dim = 16
ffn_dim = 64
patch = [2, 4, 4]

[train]
lr = 5e-4
batch_size = 4
grad_accum = 2
warmup_steps = 5
ema_decay = 0.9
target_steps = 50
checkpoint_every = 10

[models]
text_weights = "weights/text.pt"
"""


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory):
    """40 synthetic clips of 16 frames at 24×32 (8 fps: 2 s each)."""
    out = tmp_path_factory.mktemp("wide") / "data"
    write_synthetic(out, clips=40, seed=5, frames=16, height=24, width=32)
    return out


def _config(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return load_run_config(path)


def _descriptions(model: type, prefix: str = "") -> dict[str, str | None]:
    out = {}
    for name, field in model.model_fields.items():
        out[prefix + name] = field.description
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            out.update(_descriptions(sub, f"{prefix}{name}."))
    return out


def test_every_field_is_documented():
    fields = _descriptions(RunConfig)
    assert "video.fps" in fields and "train.grad_accum" in fields and "model.patch" in fields
    assert not [k for k, v in fields.items() if not v], "every run config field needs a description"


@pytest.mark.parametrize("text, message", [
    ('preset = "tiny"\n[video]\nheigth = 24\n', "video.heigth: unknown key"),
    ("colour = 1\n", "colour: unknown key"),
    ("[train]\nlr = -1\n", "train.lr: Input should be greater than 0"),
    ("[model]\nhead_dim = 17\n", "head_dim must be even"),
    ("[video\n", "not valid TOML"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ParisError, match=r"run config .*run\.toml") as e:
        _config(tmp_path, text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_preset_is_the_named_defaults_of_a_config(tmp_path):
    cfg = _config(tmp_path, NON_SQUARE)
    tiny = get_preset("tiny")
    assert configure(tiny, None) == tiny and configure(tiny, RunConfig()) == tiny
    made = configure(tiny, cfg)
    b, t = made.backbone, made.train
    assert (b.frames, b.height, b.width, b.num_layers, b.num_heads, b.head_dim, b.ffn_dim) == (8, 24, 32, 2, 2, 16, 64)
    assert (t.lr, t.batch_size, t.grad_accum, t.warmup_steps, t.ema_decay, t.target_steps, t.checkpoint_every) == \
        (5e-4, 4, 2, 5, 0.9, 50, 10)
    assert b.freq_dim == tiny.backbone.freq_dim and b.prediction == "x" and t.weight_decay == tiny.train.weight_decay
    with pytest.raises(ParisError, match=r"8×26×32 clips do not split into 2×4×4 patches"):
        configure(tiny, RunConfig.model_validate({"video": {"height": 26}}))
    with pytest.raises(ParisError, match="which 1×2×2 patches do not tile"):
        check_latent_patch(get_preset("tiny-latent", vae=tiny_asset()).backbone, (4, 5, 15, 16))


def test_flags_win_over_the_file_and_defaults_fill_the_rest(tmp_path):
    cfg = _config(tmp_path, NON_SQUARE)
    same = cfg.with_flags()
    assert (same.preset, same.clusters, same.seed, same.name, same.train.target_steps) == ("tiny", 2, 3, "wide", 50)
    flagged = cfg.with_flags(preset="small", clusters=5, seed=0, name="other", target_steps=7)
    assert (flagged.preset, flagged.clusters, flagged.seed, flagged.name) == ("small", 5, 0, "other")
    assert flagged.train.target_steps == 7 and flagged.train.lr == cfg.train.lr and flagged.video == cfg.video
    bare = RunConfig().with_flags()
    assert (bare.preset, bare.seed, bare.name, bare.clusters) == ("small", 0, "run", None)
    assert cfg.path("text_weights", tmp_path) == tmp_path / "weights" / "text.pt"
    assert cfg.recorded().models.text_weights is None and cfg.recorded().video == cfg.video


def tiny_asset():
    from protocol.model import Asset

    return Asset(cid="bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", bytes=1, name="vae")


def test_clips_must_match_the_datas_aspect_and_time_span(wide_data):
    from protocol.data import DataManifest

    data = DataManifest.load(wide_data)  # 16 frames at 8 fps, 24×32
    tiny = get_preset("tiny")
    check_clip_fit(data, configure(tiny, RunConfig.model_validate({"video": {"height": 48, "width": 64}})), 4.0)
    with pytest.raises(ParisError, match="different aspect ratio would stretch"):
        check_clip_fit(data, tiny, None)  # 32×32
    with pytest.raises(ParisError, match=r"data prepare --frames 8 --fps 8"):
        check_clip_fit(data, configure(tiny, RunConfig.model_validate({"video": {"height": 24}})), 8.0)


def test_the_run_records_its_config_and_its_id_commits_to_it(tmp_path, wide_data):
    cfg = _config(tmp_path, NON_SQUARE)
    preset = configure(get_preset("tiny"), cfg)
    spec = init_run(wide_data, 2, preset=preset, seed=3, name="wide", config=cfg)
    assert spec.config is not None and spec.config.models.text_weights is None  # no local path in the spec
    assert spec.config.video.fps == 4 and spec.preset.backbone.width == 32
    bare = init_run(wide_data, 2, preset=preset, seed=3, name="wide")
    assert bare.config is None and bare.run_id != spec.run_id
    faster = cfg.model_copy(update={"video": cfg.video.model_copy(update={"fps": 8.0, "frames": 8})})
    with pytest.raises(ParisError, match="span"):
        init_run(wide_data, 2, preset=preset, config=faster)
    shown = effective_config(spec)  # every setting, as a config: it remakes the same model
    assert configure(get_preset("tiny"), shown) == spec.preset
    assert shown.video.fps == 4 and shown.clusters == 2 and shown.seed == 3
    assert configure(get_preset("tiny"), effective_config(bare)) == bare.preset


def test_a_non_square_run_trains_and_replays_bit_for_bit(tmp_path, wide_data):
    from expert.train_expert import trainer_for_run
    from expert.verify import replay

    cfg = _config(tmp_path, NON_SQUARE.replace("grad_accum = 2", "grad_accum = 1"))
    spec = init_run(wide_data, 2, preset=configure(get_preset("tiny"), cfg), seed=3, config=cfg)

    def make():
        return trainer_for_run(spec, 0, data_dir=wide_data)

    trainer = make()
    trainer.train(1)
    parent, _ = trainer.checkpoint(tmp_path / "ck")
    trainer.train(2)
    child, meta = trainer.checkpoint(tmp_path / "ck")
    assert meta.val_loss is not None and meta.run_id == spec.run_id
    report = replay(make, parent, child, meta, tolerance=0.01)
    assert report.ok and report.exact and report.steps == 2


def test_every_run_config_in_the_docs_is_valid(tmp_path):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    blocks = [b for md in pages for b in re.findall(r"```toml\n(.*?)```", md.read_text(), re.S)]
    assert len(blocks) >= 3
    for block in blocks:
        cfg = _config(tmp_path, block)
        assert cfg.preset and cfg.video.height and cfg.train.lr
