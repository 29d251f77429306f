"""Your own models on the latent path, from the command line (issue 27, "Shown by"): for each text-encoder family
and each diffusers VAE class, a tiny random-init stand-in saved with `save_pretrained` goes through `run init`
→ `train-local` (each cluster, one step) → `train-router` → `ensemble assemble` → `sample --out x.mp4` and
`DiffusionPipeline.from_pretrained(folder)`. Commands run in this process (tests/commands.py), on one small
synthetic data set shared by the module.

The swarm part (claiming, training, publishing, fetching) does not depend on the VAE or the text encoder: it
is run end to end once, with UMT5 and the Wan VAE, in tests/test_latent_e2e.py; here the offline commands,
which the daemon drives with the same code, stand in for it.

With Wan's own parts (its VAE, UMT5, experts started `--init-from` a Wan transformer) one `expert_i/` runs
inside diffusers' own `WanPipeline` and denoises exactly as the ensemble's pipeline runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.commands import cli_inproc
from tests.test_init_from import save_wan
from tests.test_text_encoders import save_encoder
from tests.test_vae import CASES, _wan21, save_vae

pytestmark = pytest.mark.slow  # every case trains, assembles and samples a real ensemble: see each test

PROMPT = "a red circle moves left on black"
FRAMES, SIZE = 9, 32


def _ok(*args) -> subprocess.CompletedProcess:
    r = cli_inproc(*args)
    assert r.returncode == 0, f"{args}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    _ok("data", "synth", "--out", d / "data", "--clips", 12, "--seed", 1, "--frames", FRAMES, "--size",
        f"{SIZE}x{SIZE}", "--json")
    save_vae(_wan21, d / "wan-vae")
    return d


def _ensemble(root: Path, name: str, *flags) -> Path:
    """`run init FLAGS` on the tiny latent preset, one step per cluster and for the router, assembled."""
    d = root / name
    home = d / "home"
    _ok("run", "init", "--data", root / "data", "--clusters", 2, "--preset", "tiny-latent", *flags,
        "--out", d / "run.json", "--home", home, "--json")
    for k in (0, 1):
        _ok("train-local", "--run", d / "run.json", "--cluster", k, "--steps", 1, "--out", d / f"expert-{k}",
            "--home", home)
    _ok("train-router", "--run", d / "run.json", "--steps", 1, "--out", d / "router", "--home", home, "--json")
    _ok("ensemble", "assemble", "--expert", d / "expert-0", "--expert", d / "expert-1", "--router", d / "router",
        "--out", d / "ensemble", "--home", home)
    return d / "ensemble"


def _samples(ensemble: Path, tmp: Path) -> None:
    """An MP4 from the CLI (decoded back with PyAV) and frames from diffusers' generic loader."""
    import av
    from diffusers import DiffusionPipeline

    _ok("sample", PROMPT, "--ensemble", ensemble, "--out", tmp / "x.mp4", "--steps", 1, "--home", tmp / "empty")
    with av.open(str(tmp / "x.mp4")) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (256, 256, 3)  # 32×32, enlarged 8× to be watchable
    pipe = DiffusionPipeline.from_pretrained(ensemble, trust_remote_code=True)
    video = pipe(PROMPT, num_inference_steps=1, output_type="np").frames
    assert video.shape == (1, FRAMES, SIZE, SIZE, 3) and np.isfinite(video).all()


@pytest.fixture(scope="module")
def wan_parts(root) -> Path:
    """Wan's own parts: its VAE, UMT5 (model and tokenizer), experts started from a Wan transformer."""
    encoder = save_encoder("umt5", root / "umt5")
    start = save_wan(root / "wan-transformer", in_channels=4, text_dim=16)
    return _ensemble(root, "wan", "--vae", root / "wan-vae", "--text-encoder", encoder, "--init-from", start)


def test_an_expert_denoises_inside_diffusers_wan_pipeline_as_in_the_ensemble(wan_parts):
    """`expert_0/`, `vae/`, `text_encoder/` (model and tokenizer) and `scheduler/` of the folder, each loaded by
    its own diffusers / transformers class, make a `WanPipeline`: its videos have the expected shape, its
    text states, each denoiser output and the decoded frames are the ensemble's (expert 0 run the way
    ParisPipeline runs it, expert.sampling.velocity, on the same latents, timestep and states)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from expert.pipeline import ParisPipeline
    from expert.sampling import encode_prompts, sample_network, velocity

    ens = wan_parts
    transformer = WanTransformer3DModel.from_pretrained(ens / "expert_0")
    wan = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(ens / "text_encoder"),
                      text_encoder=UMT5EncoderModel.from_pretrained(ens / "text_encoder"), transformer=transformer,
                      vae=AutoencoderKLWan.from_pretrained(ens / "vae"),
                      scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(ens / "scheduler"))
    paris = ParisPipeline.from_pretrained(ens)
    calls: list[tuple[dict, torch.Tensor]] = []
    transformer.register_forward_hook(lambda m, a, kw, out: calls.append((kw, out[0])), with_kwargs=True)
    guidance, steps, tokens = 3.0, 2, paris.preset.text.context_length
    video = wan(PROMPT, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=steps,
                guidance_scale=guidance, generator=torch.Generator().manual_seed(5), max_sequence_length=tokens,
                output_type="np").frames
    assert video.shape == (1, FRAMES, SIZE, SIZE, 3) and len(calls) == 2 * steps  # conditional, unconditional

    cond, null = encode_prompts(paris.text_encoder, [PROMPT])
    for step in range(steps):
        (kw, v_c), (kw_u, v_u) = calls[2 * step], calls[2 * step + 1]
        assert torch.allclose(kw["encoder_hidden_states"], cond, atol=1e-6)
        assert torch.allclose(kw_u["encoder_hidden_states"], null, atol=1e-6)
        x, t = kw["hidden_states"], kw["timestep"][0]
        ours = velocity(paris.experts[0], x, t, cond, null, guidance)
        assert torch.allclose(ours, v_u + guidance * (v_c - v_u), atol=1e-5)
    # the whole sampler: expert 0 alone, the same noise from the same seed, decoded by the ensemble's codec
    mine = sample_network(paris.experts[0], paris.text_encoder, paris.codec, [PROMPT], steps=steps,
                          guidance=guidance, seed=5)
    assert np.abs(mine / 255.0 - video).max() <= 0.5 / 255 + 1e-4  # ours rounds to uint8


def test_wan_parts_sample_from_the_cli_and_diffusers(wan_parts, tmp_path):
    """UMT5 (states computed once at `run init`, stored beside the latents) and experts started from a Wan
    transformer: trained without the encoder, sampled with it from the folder."""
    from expert.checkpoint import read_meta, resolve_checkpoint
    from protocol.data import DataManifest
    from protocol.run import RunSpec

    d = wan_parts.parent
    spec = RunSpec.load(d / "run.json")
    assert spec.preset.text.model_name == "UMT5EncoderModel" and spec.preset.backbone.init_from is not None
    cache = DataManifest.load(d / "home" / "runs" / spec.run_id / "latents")
    assert cache.text is not None and cache.text.shape == (32, 16) and cache.latents is not None
    assert read_meta(resolve_checkpoint(d / "expert-0")).step == 1
    _samples(wan_parts, tmp_path)


def _open_clip_weights(root: Path) -> Path:
    from expert.clip_score import ClipScorer

    path = root / "open-clip.pt"
    torch.save(ClipScorer.random_init("ViT-S-32", seed=1).model.state_dict(), path)
    return path


# text-encoder family → the `run init` flags that give it (with the Wan 2.1 VAE); UMT5 is Wan's parts above
TEXT_FAMILIES = {
    "T5EncoderModel": lambda root: ("--text-encoder", save_encoder("t5", root / "t5")),
    "CLIPTextModel": lambda root: ("--text-encoder", save_encoder("clip", root / "clip")),
    "open_clip": lambda root: ("--text-model", "ViT-S-32", "--text-weights", _open_clip_weights(root)),
}


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_each_text_encoder_family_from_run_init_to_an_mp4(root, family, tmp_path):
    """~2 s each (run init, three one-step trainings, assembling, two one-step samples); open_clip ~10 s: open_clip
    builds its ViT-S-32 whole (image tower too) to save the weights, at run init, to assemble and per sampler."""
    from protocol.data import DataManifest
    from protocol.run import RunSpec

    flags = TEXT_FAMILIES[family](root)
    ensemble = _ensemble(root, family, "--vae", root / "wan-vae", *flags)
    spec = RunSpec.load(ensemble.parent / "run.json")
    cache = DataManifest.load(ensemble.parent / "home" / "runs" / spec.run_id / "latents")
    assert spec.preset.text.weights is not None and cache.text is not None  # states computed once, at run init
    assert cache.text.encoder == spec.preset.text.weights.cid and cache.text.shape == (32, spec.preset.text.width)
    _samples(ensemble, tmp_path)


@pytest.mark.parametrize("case", [c for c in CASES if c != "AutoencoderKLWan"])  # Wan 2.1: Wan's parts above
def test_each_vae_class_from_run_init_to_an_mp4(root, case, tmp_path):
    """~2 s each, on the preset's own (random, seeded) open_clip tower."""
    vae = save_vae(CASES[case][0], tmp_path / "vae")
    ensemble = _ensemble(root, case, "--vae", vae)
    _samples(ensemble, tmp_path)
    from expert.pipeline import ParisPipeline

    assert ParisPipeline.from_pretrained(ensemble).codec.latent_shape() == CASES[case][1]
