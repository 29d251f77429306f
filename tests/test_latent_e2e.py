"""The latent path across machines, end to end on 127.0.0.1: `run init --vae DIR --text-encoder DIR` puts a
small random-init AutoencoderKLWan and a `transformers` UMT5 encoder into the creator's content store, encodes
every clip once and computes every caption's text states once; both folders are then deleted; the creator's
daemon publishes the run (latents and text states as the cluster data), two joiners with their own homes
train both experts and the router from them without ever holding the VAE or the encoder; `fetch` gets both
by the CIDs the run names and only the sampling weights of each checkpoint (≤ 0.4 × their bytes), writes
`vae/` and `text_encoder/` (the encoder's own folder, with its tokenizer), and the folder samples a prompt."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests import zygote
from tests.commands import cli_inproc
from tests.daemons import CLI, ENV, ROOT, Daemon, slots, wait_status

pytestmark = pytest.mark.slow

TARGET, ROUTER, EVERY = 20, 10, 10


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return zygote.run_to_end([*CLI, *args], cwd=ROOT, env=ENV, timeout=timeout)


def _save_tiny_vae(path):
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).save_pretrained(path)


def test_a_latent_run_trains_from_cached_latents_and_fetch_writes_the_vae(synth_dir, tmp_path):
    from protocol.run import RunSpec
    from tests.test_text_encoders import save_encoder

    vae, encoder = tmp_path / "models" / "vae", save_encoder("umt5", tmp_path / "models" / "umt5")
    _save_tiny_vae(vae)
    creator_home, spec_file = tmp_path / "creator", tmp_path / "latent-run.json"
    r = cli_inproc("run", "init", "--data", synth_dir, "--clusters", 2, "--preset", "tiny-latent", "--vae", vae,
                   "--text-encoder", encoder, "--target-steps", TARGET, "--out", spec_file, "--home", creator_home,
                   "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    spec = RunSpec.load(spec_file)
    asset, text = spec.preset.backbone.vae, spec.preset.text.weights
    assert asset is not None and asset.name == "vae" and str(vae) not in spec_file.read_text()  # a CID, no path
    assert text is not None and spec.preset.text.stored and str(encoder) not in spec_file.read_text()
    shutil.rmtree(vae)  # from here on the VAE and the encoder exist only in the creator's content store
    shutil.rmtree(encoder)

    args = ["--period", "1", "--cpu-threads", "1", "--log-format", "json", "--checkpoint-every", str(EVERY),
            "--router-steps", str(ROUTER)]
    daemons: list[Daemon] = []
    try:
        creator = Daemon(creator_home, *args, "--run", str(spec_file), "--role", "verifier")
        daemons.append(creator)
        creator.wait_for(lambda e: e.get("msg") == "run ready" and e.get("run") == spec.run_id, 240, "published")
        assert not [e for e in creator.events() if "encoded" in e.get("msg", "")]  # run init's latents reused
        peers = str(creator_home / "node.json")
        joiners = [Daemon(tmp_path / f"joiner-{i}", *args, "--initial-peers-file", peers) for i in range(2)]
        daemons += joiners
        wait_status(creator_home, lambda s: all(slots(s)[f"expert-{k}"]["state"] == "done" for k in range(2))
                    and (slots(s)["router"]["checkpoint_step"] or 0) >= ROUTER, 600, "experts and router done")
        for j in joiners:  # they trained from latents and stored states: neither model reached their stores
            assert not (j.home / "store" / "packs" / asset.cid).exists()
            assert not (j.home / "store" / "packs" / text.cid).exists()
            assert not [e for e in j.events() if "cannot" in e.get("msg", "")]
        trained = {e.get("msg") for j in joiners for e in j.events()}
        assert {"published expert-0 checkpoint", "published expert-1 checkpoint"} <= trained

        out = tmp_path / "ensemble"
        r = cli("fetch", "--initial-peers-file", peers, "--out", str(out), "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        fetched = json.loads(r.stdout)
    finally:
        for d in daemons:
            d.stop()
    assert fetched["clusters"] == [0, 1] and fetched["asset_bytes"] == asset.bytes + text.bytes
    assert fetched["asset_downloaded_bytes"] == asset.bytes + text.bytes  # from the creator's store, by CID
    # only each checkpoint's sampling weights came down, not its training state (model, optimizer, RNG)
    ratio = fetched["downloaded_bytes"] / fetched["checkpoint_bytes"]
    print(f"fetch downloaded {fetched['downloaded_bytes']} of {fetched['checkpoint_bytes']} checkpoint bytes "
          f"({ratio:.3f}) and {fetched['asset_downloaded_bytes']} asset bytes")
    assert 0 < ratio <= 0.4, fetched
    for rel in ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "text_encoder/tokenizer.json", "expert_0/config.json",
                "router/config.json"):
        assert (out / rel).is_file(), rel
    from expert.assets import asset_of
    from expert.pipeline import ParisPipeline

    assert asset_of(out / "vae").cid == asset.cid  # the VAE's own bytes, as the run named them
    pipe = ParisPipeline.from_pretrained(out)
    videos = pipe("a red circle moving right", strategy="top1", num_inference_steps=2, output_type="uint8").frames
    assert videos.shape == (1, 9, 32, 32, 3) and videos.dtype.name == "uint8"
