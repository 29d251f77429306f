"""The ensemble folder as diffusers users load and call it: `DiffusionPipeline.from_pretrained(folder)`, the
usual `__call__` arguments, an output with `.frames`, `torch_dtype` and `.to()`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from expert.pipeline import ParisPipeline, ParisPipelineOutput
from protocol.errors import IntegrityError, ParisError
from tests.ensembles import tiny_ensemble

pytestmark = pytest.mark.slow  # trains two tiny experts and a router (about 15 s)

PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def ensemble(tiny_run, tmp_path_factory):
    spec, _ = tiny_run
    return tiny_ensemble(spec, tmp_path_factory.mktemp("diffusers-ens"), steps=2, cap=40)[0]


def test_diffusion_pipeline_from_pretrained_loads_the_folder(ensemble):
    from diffusers import DiffusionPipeline

    index = json.loads((ensemble / "model_index.json").read_text())
    assert index["_class_name"] == ["paris_pipeline", "ParisPipeline"] and (ensemble / "paris_pipeline.py").is_file()
    pipe = DiffusionPipeline.from_pretrained(ensemble, trust_remote_code=True)
    assert isinstance(pipe, ParisPipeline) and len(pipe.experts) == 2
    ours = ParisPipeline.from_pretrained(ensemble)
    for a, b in zip(pipe.experts[1].parameters(), ours.experts[1].parameters(), strict=True):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    out = pipe(PROMPT, num_inference_steps=2, generator=g)
    assert isinstance(out, ParisPipelineOutput) and out.routing is None
    assert out.frames.shape == (1, 8, 32, 32, 3) and out.frames.dtype == np.float32  # diffusers' "np": [0, 1]
    assert out.frames.min() >= 0.0 and out.frames.max() <= 1.0
    same = ours(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="uint8")
    assert np.array_equal((out.frames * 255).round().astype(np.uint8), same.frames)
    assert pipe.router_mode == "joint"  # what the folder records; from_pretrained's router_mode overrides it
    assert DiffusionPipeline.from_pretrained(ensemble, trust_remote_code=True, router_mode="xt").router_mode == "xt"


def test_the_folder_module_is_checked_like_every_file(ensemble, tmp_path):
    import shutil

    from diffusers import DiffusionPipeline

    bad = tmp_path / "bad"
    shutil.copytree(ensemble, bad)
    (bad / "paris_pipeline.py").write_text((bad / "paris_pipeline.py").read_text() + "\nimport os\n")
    with pytest.raises(IntegrityError, match=r"paris_pipeline\.py is corrupt"):
        DiffusionPipeline.from_pretrained(bad, trust_remote_code=True)


def test_call_takes_the_diffusers_arguments(ensemble):
    pipe = ParisPipeline.from_pretrained(ensemble)
    g = torch.Generator().manual_seed(0)
    kw = dict(num_inference_steps=2, guidance_scale=3.0)
    plain = pipe([PROMPT, "a blue square"], generator=g, output_type="uint8", **kw).frames
    assert plain.shape == (2, 8, 32, 32, 3) and plain.dtype == np.uint8
    negative = pipe([PROMPT, "a blue square"], negative_prompt="a green background",
                    generator=torch.Generator().manual_seed(0), output_type="uint8", **kw).frames
    assert not np.array_equal(plain, negative)  # the negative prompt replaces the empty caption in guidance
    pt = pipe(PROMPT, num_videos_per_prompt=2, height=48, width=64, num_frames=16, output_type="pt", seed=1,
              **kw).frames
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 16, 3, 48, 64)  # N×T×C×H×W, as diffusers' "pt"
    pil = pipe(PROMPT, output_type="pil", **kw).frames
    assert len(pil) == 1 and len(pil[0]) == 8 and pil[0][0].size == (32, 32)
    latent = pipe(PROMPT, output_type="latent", **kw).frames
    assert latent.shape == (1, 3, 8, 32, 32)
    with pytest.raises(ParisError, match="do not divide"):
        pipe(PROMPT, height=30, **kw)
    with pytest.raises(ParisError, match="output_type 'mp4'"):
        pipe(PROMPT, output_type="mp4", **kw)


def test_model_cpu_offload_and_diffusers_video_export(ensemble, tmp_path):
    import av
    from diffusers.utils import export_to_video
    from diffusers.utils.export_utils import encode_video

    pipe = ParisPipeline.from_pretrained(ensemble)
    pipe.enable_model_cpu_offload(device="cpu")  # on a GPU: idle experts stay on the CPU
    seen = []
    pipe.experts[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    out = pipe(PROMPT, num_inference_steps=2, strategy="full")
    assert pipe.offload and seen and out.frames.shape == (1, 8, 32, 32, 3)
    encode_video(out.frames[0], fps=8, output_path=str(tmp_path / "v.mp4"))  # diffusers' PyAV writer
    export_to_video(list(out.frames[0]), str(tmp_path / "w.mp4"), fps=8)  # imageio + imageio-ffmpeg: our deps
    for name in ("v.mp4", "w.mp4"):
        with av.open(str(tmp_path / name)) as f:
            assert sum(1 for _ in f.decode(video=0)) == 8, name


def test_torch_dtype_and_to(ensemble):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(ensemble, trust_remote_code=True, dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16 and next(pipe.router.parameters()).dtype == torch.bfloat16
    assert next(pipe.text_encoder.parameters()).dtype == torch.float32  # the text states stay float32
    frames = pipe(PROMPT, num_inference_steps=1, output_type="uint8").frames
    assert frames.shape == (1, 8, 32, 32, 3)
    assert ParisPipeline.from_pretrained(ensemble, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    pipe = pipe.to(torch.float32).to("cpu")
    assert pipe.dtype == torch.float32 and pipe.device == torch.device("cpu")
    pipe.to(torch_device="cpu", torch_dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16


def test_each_expert_folder_loads_alone_as_its_class(ensemble, tiny_run, tmp_path):
    """`expert_i/` loads alone with `from_pretrained` as the class `model_index.json` names (ours: Paris' pooled
    caption and x-prediction recorded in its config) and predicts what the ensemble's expert predicts; a plain
    Wan expert (an `--init-from` run) is diffusers' own WanTransformer3DModel."""
    from diffusers import WanTransformer3DModel

    from expert.backbone import ParisWanTransformer3DModel, build_backbone

    index = json.loads((ensemble / "model_index.json").read_text())
    assert index["expert_0"] == ["paris_node", "ParisWanTransformer3DModel"]
    alone = ParisWanTransformer3DModel.from_pretrained(ensemble / "expert_0").eval()
    pipe = ParisPipeline.from_pretrained(ensemble)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3, 8, 32, 32, generator=g), torch.randn(2, 32, 64, generator=g)
    text[:, 20:] = 0  # padding
    t = torch.tensor([300.0, 900.0])
    with torch.no_grad():
        want = pipe.experts[0](x, t, text, return_dict=False)[0]
        assert torch.equal(alone(x, t, text, return_dict=False)[0], want)
        plain = WanTransformer3DModel.from_pretrained(ensemble / "expert_0").eval()
        assert not torch.allclose(plain(x, t, text, return_dict=False)[0], want)  # diffusers' own drops ours

    spec, _ = tiny_run
    wan = spec.preset.backbone.model_copy(update={"text_conditioning": "wan", "prediction": None})
    model = build_backbone(wan, 64, seed=1)
    assert type(model) is WanTransformer3DModel
    model.save_pretrained(tmp_path / "plain")
    again = WanTransformer3DModel.from_pretrained(tmp_path / "plain")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
