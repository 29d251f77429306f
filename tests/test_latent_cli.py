"""A latent run from the command line with no swarm: `run init --vae` → `train-local` / `train-router` →
`ensemble assemble` and `sample`, which find the VAE in the home's content store (`--home`) or take
`--vae DIR`, checked against the CID the run names."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.commands import cli_inproc
from tests.test_vae import _ltx, _wan21, save_vae

pytestmark = pytest.mark.slow  # real processes: about a minute and a half in all


def _cli(*args) -> subprocess.CompletedProcess:
    return cli_inproc(*args)


def _ok(*args) -> subprocess.CompletedProcess:
    r = _cli(*args)
    assert r.returncode == 0, f"{args}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _refused(*args, match: str) -> str:
    r = _cli(*args)
    assert r.returncode == 1, f"{args}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    text = " ".join(r.stderr.split())  # the console wraps long lines
    assert text.count("error:") == 1 and "Traceback" not in text and match in text, r.stderr  # one red line
    return text


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("latent-cli")
    _ok("data", "synth", "--out", d / "data", "--clips", 24, "--seed", 1, "--frames", 9, "--size", "32x32", "--json")
    vae = save_vae(_wan21, d / "models" / "vae")
    home = d / "home"
    _ok("run", "init", "--data", d / "data", "--clusters", 2, "--preset", "tiny-latent", "--vae", vae,
        "--out", d / "run.json", "--home", home, "--json")
    for k in (0, 1):
        _ok("train-local", "--run", d / "run.json", "--cluster", k, "--steps", 1, "--out", d / f"expert-{k}",
            "--home", home)
    _ok("train-router", "--run", d / "run.json", "--steps", 1, "--out", d / "router", "--home", home, "--json")
    return d, vae, home


def test_sample_and_assemble_find_the_vae_in_the_home_or_take_it(latent_run, tmp_path):
    d, vae, home = latent_run
    empty = tmp_path / "empty-home"
    expert = d / "expert-0"
    line = _refused("sample", "a red circle", "--checkpoint", expert, "--out", tmp_path / "a.gif", "--steps", 1,
                    "--home", empty, match="the video VAE vae (b")
    assert "is not in" in line and "content store: give --home" in line and "--vae DIR" in line
    assert not empty.exists()  # looking in a home creates nothing there
    other = save_vae(_ltx, tmp_path / "other" / "vae")  # another class, other bytes: not the run's VAE
    _refused("sample", "a red circle", "--checkpoint", expert, "--out", tmp_path / "a.gif", "--steps", 1,
             "--home", empty, "--vae", other, match="is not this model's video VAE: its CID is")
    _refused("sample", "a red circle", "--checkpoint", expert, "--out", tmp_path / "a.gif", "--steps", 1,
             "--home", empty, "--text-encoder", other, match="this model has no text-encoder weights")
    copy = tmp_path / "elsewhere" / "vae"  # the same bytes anywhere: the run's VAE
    shutil.copytree(vae, copy)
    _ok("sample", "a red circle", "--checkpoint", expert, "--out", tmp_path / "by-path.gif", "--steps", 1,
        "--home", empty, "--vae", copy)
    _ok("sample", "a red circle", "--checkpoint", expert, "--out", tmp_path / "by-home.gif", "--steps", 1,
        "--home", home)
    assert (tmp_path / "by-path.gif").stat().st_size > 0 and (tmp_path / "by-home.gif").stat().st_size > 0

    assemble = ("ensemble", "assemble", "--expert", d / "expert-0", "--expert", d / "expert-1", "--router",
                d / "router")
    _refused(*assemble, "--out", tmp_path / "no", "--home", empty, match="content store: give --home")
    assert not (tmp_path / "no").exists()
    _ok(*assemble, "--out", tmp_path / "ens-home", "--home", home)
    _ok(*assemble, "--out", tmp_path / "ens-path", "--home", empty, "--vae", copy)
    index = json.loads((tmp_path / "ens-path" / "model_index.json").read_text())
    assert index["files"]["vae/config.json"] == json.loads(
        (tmp_path / "ens-home" / "model_index.json").read_text())["files"]["vae/config.json"]
    _ok("sample", "a red circle", "--ensemble", tmp_path / "ens-path", "--out", tmp_path / "ens.gif", "--steps", 1,
        "--home", empty)
    assert (tmp_path / "ens.gif").stat().st_size > 0

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "ens-path", trust_remote_code=True)  # its vae/ inside
    out = pipe("a red circle", num_inference_steps=1, seed=0)
    assert out.frames.shape == (1, 9, 32, 32, 3) and pipe.codec.latent_shape() == (4, 5, 16, 16)


def test_run_init_takes_the_vae_channels_and_refuses_a_folder_that_is_no_vae(latent_run, tmp_path):
    from protocol.run import RunSpec

    d, _, _ = latent_run
    ltx = tmp_path / "ltx"
    save_vae(lambda: _ltx(8), ltx)
    _ok("run", "init", "--data", d / "data", "--clusters", 2, "--preset", "tiny-latent", "--vae", ltx,
        "--out", tmp_path / "run.json", "--home", tmp_path / "home", "--json")
    spec = RunSpec.load(tmp_path / "run.json")
    assert spec.preset.backbone.in_channels == 8  # measured from the VAE, not the preset's 4
    other = tmp_path / "transformer"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    _refused("run", "init", "--data", d / "data", "--clusters", 2, "--preset", "tiny-latent", "--vae", other,
             "--out", tmp_path / "no.json", "--home", tmp_path / "home2", match="holds a 'WanTransformer3DModel'")
    assert not (tmp_path / "no.json").exists() and not (tmp_path / "home2" / "store").exists()
