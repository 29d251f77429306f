"""`transformers` text encoders (T5 / UMT5 encoder, CLIP text model) by local folder, their states computed once
at `run init` and stored with the data: trainers, verifiers and routers never load the encoder (issue 27 item 2).

Each encoder is a tiny random-init stand-in of the real class saved with `save_pretrained`, with a tokenizer
trained here on the synthetic captions (tokenizers' Unigram: no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from expert.assets import asset_of
from expert.latent_data import encode_dataset, matches
from expert.presets import get_preset
from expert.run_init import init_run
from expert.shards import open_dataset
from expert.text_hf import HFTextEncoder, transformers_text
from protocol.errors import ParisError
from tests.stored_text import check_stored_states

CAPTIONS = ["a red circle moves left on black", "a blue square bounces on white", "a green triangle spins",
            "a yellow star moves right on grey", "a small purple circle moves up"] * 4


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CAPTIONS, trainers.UnigramTrainer(vocab_size=60, unk_token="<unk>",
                                                              special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _model(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "clip":
        return tf.CLIPTextModel(tf.CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  max_position_embeddings=40, pad_token_id=0, eos_token_id=1))
    config, model = (tf.T5Config, tf.T5EncoderModel) if kind == "t5" else (tf.UMT5Config, tf.UMT5EncoderModel)
    return model(config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0,
                        eos_token_id=1))


def save_encoder(kind: str, folder: Path) -> Path:
    _model(kind).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {k: save_encoder(k, root / k) for k in ("t5", "umt5", "clip")}


@pytest.mark.parametrize("kind,cls", [("t5", "T5EncoderModel"), ("umt5", "UMT5EncoderModel"),
                                      ("clip", "CLIPTextModel")])
def test_each_family_reads_its_folder_and_zeroes_padding(encoders, kind, cls):
    config = transformers_text(encoders[kind], asset_of(encoders[kind]), 32)
    assert config.model_name == cls and config.width == 16 and config.stored and config.family == "transformers"
    states = HFTextEncoder(config).encode_captions(["a red circle moves left", ""])
    assert states.shape == (2, 32, 16) and bool(states[0, 0].abs().sum() > 0)
    assert float(states[0, -1].abs().sum()) == 0.0  # padding, as Wan zero-pads its UMT5 states
    again = HFTextEncoder(config).encode_captions(["a red circle moves left", ""])
    assert torch.equal(states, again)  # loaded weights, not a random init


def test_a_folder_that_is_no_text_encoder_is_refused_in_one_line(encoders, tmp_path):
    wrong = tmp_path / "vae"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ParisError, match="not a text encoder"):
        transformers_text(wrong, asset_of(encoders["t5"]), 32)
    bare = save_encoder("t5", tmp_path / "bare")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bare / f).unlink()
    with pytest.raises(ParisError, match="has no tokenizer"):
        transformers_text(bare, asset_of(bare), 32)
    misfit = save_encoder("t5", tmp_path / "misfit")  # weights of another width than the config says
    config = json.loads((misfit / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**config, "d_model": 24}))
    with pytest.raises(ParisError, match="do not fit its config"):
        HFTextEncoder(transformers_text(misfit, asset_of(misfit), 32))


def test_states_are_computed_once_at_run_init_and_training_never_loads_the_encoder(synth_dir, encoders, tmp_path):
    """`run init`'s encoding on the tiny preset with a UMT5 encoder: the data set carries the states, the run id
    commits to the encoder, and expert and router trainers (and their validation) run with the encoder gone."""
    from expert.train_router import router_trainer_for_run

    folder = encoders["umt5"]
    preset = get_preset("tiny", text_encoder=(asset_of(folder), folder))
    spec = init_run(synth_dir, 2, preset=preset, seed=0, name="t5")
    other = get_preset("tiny", text_encoder=(asset_of(encoders["t5"]), encoders["t5"]))
    assert init_run(synth_dir, 2, preset=other, seed=0, name="t5").run_id != spec.run_id  # commits to it
    assert init_run(synth_dir, 2, preset=get_preset("tiny"), seed=0, name="t5").run_id != spec.run_id

    calls = []
    original = HFTextEncoder.encode_captions

    def counted(self, captions, device=None):
        calls.append(len(captions))
        return original(self, captions, device)

    HFTextEncoder.encode_captions = counted
    try:
        manifest = encode_dataset(synth_dir, spec.preset, tmp_path / "enc", text_batch=64)
    finally:
        HFTextEncoder.encode_captions = original
    assert sum(calls) == spec.data.total_clips + 1 and max(calls) <= 64  # batched; once each, plus ""
    assert manifest.text is not None and manifest.text.shape == (32, 16) and manifest.latents is None
    assert matches(manifest, spec.preset, spec.data.data_id)
    assert not matches(manifest, other, spec.data.data_id) and not matches(manifest, get_preset("tiny"),
                                                                           spec.data.data_id)
    def router() -> None:
        trainer = router_trainer_for_run(spec, data_dir=tmp_path / "enc")
        assert trainer.train(1) == 1 and trainer.validation_loss() is not None

    check_stored_states(spec, tmp_path / "enc", HFTextEncoder, steps=2, also=router)


def test_a_stored_encoder_run_refuses_data_without_its_states(synth_dir, encoders):
    from expert.train_expert import trainer_for_run

    folder = encoders["clip"]
    spec = init_run(synth_dir, 2, preset=get_preset("tiny", text_encoder=(asset_of(folder), folder)), seed=0)
    with pytest.raises(ParisError, match="holds no text states"):
        trainer_for_run(spec, 0, data_dir=synth_dir)  # the pixel data set, never encoded


@pytest.mark.slow
def test_an_ensemble_carries_its_encoder_and_samples_new_prompts(synth_dir, encoders, tmp_path):
    """Experts and router trained on stored states (one step each), assembled: the folder holds the encoder's
    own folder, byte for byte, and `DiffusionPipeline.from_pretrained` samples a prompt no caption had. ~25 s
    (slow): two trainers, a router, assembling and loading a pipeline, on the real classes."""
    from diffusers import DiffusionPipeline

    from expert.pipeline import assemble
    from expert.train_expert import ExpertTrainer
    from expert.train_router import router_trainer_for_run

    folder = encoders["t5"]
    spec = init_run(synth_dir, 2, preset=get_preset("tiny", text_encoder=(asset_of(folder), folder)), seed=0)
    encode_dataset(synth_dir, spec.preset, tmp_path / "enc")
    _, clips = open_dataset(tmp_path / "enc")
    for k in range(2):
        ExpertTrainer(spec.preset, clips.select(spec.train_clips(k)), seed=0, run_id=spec.run_id,
                      cluster=k).train(1, checkpoint_dir=tmp_path / f"expert{k}")
    router_trainer_for_run(spec, data_dir=tmp_path / "enc", cap=20).train(1, checkpoint_dir=tmp_path / "router")
    loads = []
    original = HFTextEncoder.__init__

    def counted(self, config):
        loads.append(config.model_name)
        original(self, config)

    HFTextEncoder.__init__ = counted
    try:
        out = assemble([tmp_path / "expert0", tmp_path / "expert1"], tmp_path / "router", tmp_path / "ensemble")
    finally:
        HFTextEncoder.__init__ = original
    assert loads == ["T5EncoderModel"]  # once for the ensemble, not once per expert
    def files(d: Path) -> dict:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}

    assert files(out / "text_encoder") == files(folder)  # the encoder's own folder, byte for byte
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    video = pipe("a purple hexagon drifts", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                 output_type="np").frames
    assert np.asarray(video).shape[-3:] == (32, 32, 3) and np.isfinite(np.asarray(video, dtype=np.float32)).all()
