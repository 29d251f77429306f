"""`ParisPipeline`: the assembled ensemble (K experts + router + text encoder + scheduler) as one
diffusers pipeline, loaded from the diffusers-style folder that `fetch` / `ensemble assemble` write.

Folder layout (like Paris 1.0's release): `model_index.json`, `expert_0/ … expert_{K-1}/` and `router/`
(each `config.json` + `diffusion_pytorch_model.safetensors`; the router adds `router_config.json`),
`text_encoder/` (`config.json` + `model.safetensors`), `tokenizer/` (the BPE vocabulary captions are
tokenized with), `scheduler/`, `paris_config.json` (the preset), and `vae/` for latent-space presets (the
run's VAE asset, byte for byte: its CID in the preset still names it). Every file is listed with its
SHA-256 in `model_index.json` and verified on load.

Routing modes (protocol.model.RouterHead): `xt` (Paris: p(k | x_t)), `joint` (DDM: the trunk also reads
the caption), `caption` (p(k | c) alone) and `combined` (p(k | x_t) · p(k | c) / p(k)). The folder's
`router/router_config.json` records the mode it was assembled with; `ParisPipeline(..., router_mode=…)`,
`from_pretrained(..., router_mode=…)` and each call's `router_mode` override it.

Sampling: at each step the router's posterior → strategy weights → only the selected experts run, each
once on all the batch rows that selected it, with classifier-free guidance applied per expert before
mixing. With `offload=True` idle experts stay on the CPU, so device memory follows the selected experts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin, WanTransformer3DModel
from diffusers.utils import BaseOutput
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from expert.assets import asset_path, register_asset
from expert.backbone import ParisWanTransformer3DModel, PixelCodec, build_codec
from expert.router import CaptionPrior, Router
from expert.routing import Strategy, mix, parse_strategy, routing_weights
from expert.sampling import encode_prompts, precision, velocity
from expert.text import TextEncoder, load_text_encoder, write_tokenizer
from expert.vae import VaeCodec, probe_vae
from protocol.canonical import file_sha256
from protocol.errors import IntegrityError, ParisError
from protocol.model import ExpertPreset, RouterHead, TextEncoderConfig

MODEL_INDEX = "model_index.json"
PRIOR_FILE = "caption_prior.safetensors"
OUTPUT_TYPES = ("np", "pt", "pil", "latent", "uint8")
# The folder's own pipeline module, so that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
# finds the class (diffusers' custom pipelines: model_index.json's `_class_name` is [module, class]).
ENTRY_MODULE = "paris_pipeline"
ENTRY_FILE = """\"\"\"A paris-node ensemble (pip install paris-node): `DiffusionPipeline.from_pretrained(this_folder,
trust_remote_code=True)` loads it with paris-node's ParisPipeline, every file checked against model_index.json.\"\"\"

from expert.pipeline import DiffusersEntry as ParisPipeline

__all__ = ["ParisPipeline"]
"""


@dataclass
class ParisPipelineOutput(BaseOutput):
    """What a call returns, as diffusers pipelines do: `frames` (per `output_type`) and, when
    `record_routing`, the per-step routing weights (else None)."""

    frames: Any
    routing: list[dict] | None = None


class ParisPipeline(DiffusionPipeline):
    def __init__(self, experts: list[WanTransformer3DModel], router: Router, text_encoder: TextEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler, codec: PixelCodec, preset: ExpertPreset,
                 router_mode: str | None = None) -> None:
        super().__init__()
        self.register_modules(router=router, text_encoder=text_encoder, scheduler=scheduler)
        self.router_mode = _check_mode(router.head, router_mode)
        self.experts = list(experts)
        self.codec = codec
        self.preset = preset
        self.execution_device = torch.device("cpu")
        self.offload = False  # enable_model_cpu_offload: every call keeps idle experts on the CPU

    @property
    def device(self) -> torch.device:  # diffusers infers it from registered modules; ours are not all registered
        return self.execution_device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.experts[0].parameters()).dtype

    def to(self, *args, offload: bool = False, **kwargs) -> ParisPipeline:  # type: ignore[override]
        """As diffusers' `to`: `to(device)`, `to(dtype)`, `to(device, dtype)` or `to(torch_device=…,
        torch_dtype=…)`. The router, text encoder and codec go to the device; the experts too unless
        `offload`. A dtype applies to the experts and the router (the text encoder and VAE stay float32)."""
        device = kwargs.pop("device", kwargs.pop("torch_device", None))
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif a is not None:
                device = a
        if kwargs:
            raise TypeError(f"unexpected arguments to ParisPipeline.to: {', '.join(kwargs)}")
        if dtype is not None:
            for m in (*self.experts, self.router):
                m.to(dtype)
        if device is not None:
            self.execution_device = torch.device(device)
            for m in (self.router, self.text_encoder, self.codec):
                m.to(self.execution_device)
            for e in self.experts:
                e.to("cpu" if offload else self.execution_device)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda") -> None:
        """diffusers' model offload, done the ensemble's way (no accelerate hooks): the router, text encoder and
        VAE sit on the device; each expert visits it only while it runs (`offload` on every call)."""
        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self.offload = True
        self.to(device, offload=True)

    # --- folder I/O -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, extra: dict | None = None, **_) -> None:  # type: ignore[override]
        """Write the folder (into a temporary sibling first, then rename: never a half-written ensemble)."""
        directory = Path(directory)
        tmp = directory.parent / f".{directory.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for k, e in enumerate(self.experts):
            e.save_pretrained(tmp / f"expert_{k}", safe_serialization=True)
        self.router.trunk.save_pretrained(tmp / "router", safe_serialization=True)
        head = self.router.head.model_copy(update={"mode": self.router_mode})
        (tmp / "router" / "router_config.json").write_text(head.model_dump_json())
        if self.router.prior is not None:
            save_file({k: v.contiguous() for k, v in self.router.prior.state_dict().items()},
                      tmp / "router" / PRIOR_FILE)
        text_cfg = self.text_encoder.config
        if text_cfg.family == "transformers":  # its own folder (model + tokenizer), byte for byte: its CID holds
            shutil.copytree(asset_path(text_cfg.weights, "text encoder"), tmp / "text_encoder")
        else:
            (tmp / "text_encoder").mkdir()
            (tmp / "text_encoder" / "config.json").write_text(text_cfg.model_dump_json())
            save_file({k: v.contiguous() for k, v in self.text_encoder.state_dict().items()},
                      tmp / "text_encoder" / "model.safetensors")
            write_tokenizer(tmp / "tokenizer", text_cfg.context_length)
        self.scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "paris_config.json").write_text(self.preset.model_dump_json())
        if isinstance(self.codec, VaeCodec):  # the asset's own bytes: its CID still names them
            shutil.copytree(self.codec.vae_dir, tmp / "vae")
        (tmp / f"{ENTRY_MODULE}.py").write_text(ENTRY_FILE)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        index = {"_class_name": [ENTRY_MODULE, "ParisPipeline"], "_diffusers_version": _diffusers_version(),
                 "ensemble": ["expert.pipeline", "EnsembleFolder"],
                 "num_experts": len(self.experts), "router": ["paris_node", "Router"],
                 "text_encoder": ["transformers", text_cfg.model_name] if text_cfg.family == "transformers"
                 else ["paris_node", "TextEncoder"],
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 **{f"expert_{k}": _library_class(e) for k, e in enumerate(self.experts)},
                 "paris": extra or {}, "files": files}
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, router_mode: str | None = None,  # type: ignore[override]
                        torch_dtype: torch.dtype | None = None, dtype: torch.dtype | None = None,
                        **_) -> ParisPipeline:
        """Load and verify an ensemble folder (every file's SHA-256 against `model_index.json`); `router_mode`
        overrides the mode the folder records; `dtype` (or `torch_dtype`) is the experts' and router's. Also what
        `DiffusionPipeline.from_pretrained(directory, trust_remote_code=True)` calls (ENTRY_FILE)."""
        directory = Path(directory)
        index = _read_index(directory)
        try:
            preset = ExpertPreset.model_validate_json((directory / "paris_config.json").read_bytes())
            head = RouterHead.model_validate_json((directory / "router" / "router_config.json").read_bytes())
            text_cfg = preset.text if preset.text.family == "transformers" else \
                TextEncoderConfig.model_validate_json((directory / "text_encoder" / "config.json").read_bytes())
        except (OSError, ValidationError) as e:
            raise IntegrityError(f"ensemble {directory} has a missing or malformed config: {e}") from None
        k = int(index.get("num_experts", 0))
        if k < 1 or head.routed != k:
            raise IntegrityError(f"ensemble {directory}: the router has {head.routed} outputs for {k} experts")
        tc = preset.backbone.text_conditioning
        experts = [_load_wan(directory / f"expert_{i}", tc, preset.backbone.prediction).eval() for i in range(k)]
        if text_cfg.family == "transformers":  # the folder's text_encoder/ (its files' hashes were checked above)
            assert text_cfg.weights is not None
            register_asset(text_cfg.weights, directory / "text_encoder")
            text = load_text_encoder(text_cfg)
        else:
            text = TextEncoder(text_cfg, load_weights=False)  # its weights are the folder's
            text.load_state_dict(load_file(directory / "text_encoder" / "model.safetensors"))
        prior = None
        if head.caption_prior:
            prior = CaptionPrior(text.width, head.num_experts)
            try:
                prior.load_state_dict(load_file(directory / "router" / PRIOR_FILE))
            except (OSError, RuntimeError) as e:
                detail = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise IntegrityError(f"ensemble {directory}: the router's caption prior does not load: {detail}") \
                    from None
        router = Router.from_trunk(_load_wan(directory / "router", tc), head, text.width, prior).eval()
        if preset.backbone.vae is not None:  # the folder's vae/ (its files' hashes were checked above)
            register_asset(preset.backbone.vae, directory / "vae")
        codec = build_codec(preset.backbone)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler")
        for m in (*experts, router, text):
            m.requires_grad_(False)
        pipe = cls(experts, router, text, scheduler, codec, preset, router_mode or head.mode)
        dtype = dtype or torch_dtype
        return pipe.to(dtype) if isinstance(dtype, torch.dtype) else pipe

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 4.0, num_videos_per_prompt: int = 1,
                 generator: torch.Generator | None = None, output_type: str = "np", return_dict: bool = True, *,
                 strategy: str | Strategy = "top1", seed: int = 0, offload: bool = False, record_routing: bool = False,
                 router_mode: str | None = None, on_step=None) -> ParisPipelineOutput | tuple:
        """Videos for `prompt` (each `num_videos_per_prompt` times), as diffusers' video pipelines take and
        return them: `output_type` "np" (N×T×H×W×3 float in [0, 1], the default), "pt" (N×T×3×H×W), "pil"
        (lists of PIL images), "latent", or "uint8" (N×T×H×W×3, what files are written from). `height`,
        `width`, `num_frames` default to the size the experts were trained at. `negative_prompt` replaces the
        empty caption of classifier-free guidance. Noise comes from `generator`, else from `seed`. Paris'
        own: `strategy` (how the router's posterior picks experts), `router_mode`, `offload` (idle experts
        stay on the CPU), `record_routing` (the per-step weights in the output's `routing`)."""
        if output_type not in OUTPUT_TYPES:
            raise ParisError(f"output_type {output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        mode = _check_mode(self.router.head, router_mode) if router_mode else self.router_mode
        prompts = [p for p in ([prompt] if isinstance(prompt, str) else list(prompt))
                   for _ in range(num_videos_per_prompt)]
        dev = self.execution_device
        cond, null = (s.to(dev) for s in encode_prompts(self.text_encoder, prompts))
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else \
                [n for n in negative_prompt for _ in range(num_videos_per_prompt)]
            if len(negatives) != len(prompts):
                raise ParisError(f"{len(negatives)} negative prompts for {len(prompts)} videos")
            null = encode_prompts(self.text_encoder, negatives)[0].to(dev)
        shape = self._latent_shape(num_frames, height, width)
        g = generator if generator is not None else torch.Generator().manual_seed(seed)
        x = torch.randn((len(prompts), *shape), generator=g, device=g.device).to(dev)
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        record: list[dict] = []
        for i, t in enumerate(self.scheduler.timesteps):
            v, probs, weights = ensemble_velocity(self.experts, self.router, x, t, cond, null, strat,
                                                  guidance=guidance_scale, generator=g, router_mode=mode,
                                                  offload_to=torch.device("cpu") if offload or self.offload
                                                  else None)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if record_routing:
                record.append({"step": i, "t": round(float(t) / 1000, 5), "router_mode": mode,
                               "posterior": probs.cpu().numpy().round(5).tolist(),
                               "weights": weights.cpu().numpy().round(5).tolist()})
            if on_step:
                on_step(i + 1, num_inference_steps)
        frames = x if output_type == "latent" else _as_output(self.codec.decode(x).cpu(), output_type)
        out = ParisPipelineOutput(frames=frames, routing=record if record_routing else None)
        return out if return_dict else (out.frames, out.routing)

    def _latent_shape(self, frames: int | None, height: int | None, width: int | None) -> tuple[int, ...]:
        """The noise shape for a video of this size (default: the experts' own), or a one-line error."""
        b = self.preset.backbone
        size = (frames or b.frames, height or b.height, width or b.width)
        if size == (b.frames, b.height, b.width):
            return tuple(self.codec.latent_shape())
        if isinstance(self.codec, VaeCodec):
            shape = probe_vae(self.codec.vae_dir, *size).latent
        else:
            shape = (b.in_channels, *size)
        if any(n % p for n, p in zip(shape[1:], b.patch_size, strict=True)):
            raise ParisError(f"a {size[0]}×{size[1]}×{size[2]} video is {shape[1:]} in the experts' space, "
                             f"which their patches {tuple(b.patch_size)} do not divide")
        return tuple(shape)

class EnsembleFolder(ModelMixin):
    """How diffusers' generic loader reaches `ParisPipeline.from_pretrained`: the folder's `ensemble`
    component (model_index.json) names this class, which has no subfolder, so diffusers hands it the whole
    folder, with the `torch_dtype` it was given (it passes one only to model classes)."""

    @classmethod
    def from_pretrained(cls, folder, torch_dtype: torch.dtype | None = None, **_) -> ParisPipeline:  # type: ignore[override]
        return ParisPipeline.from_pretrained(folder, torch_dtype=torch_dtype)


class DiffusersEntry(DiffusionPipeline):
    """The class `DiffusionPipeline.from_pretrained(folder)` builds from the folder's module: its one
    component is the loaded ParisPipeline, which it returns as itself (with `router_mode`, if given to
    `from_pretrained`, applied)."""

    def __new__(cls, ensemble: ParisPipeline | None = None, router_mode: str | None = None,  # type: ignore[misc]
                **_) -> ParisPipeline:
        if not isinstance(ensemble, ParisPipeline):
            raise ParisError("a Paris ensemble is loaded with DiffusionPipeline.from_pretrained(folder) or "
                             "ParisPipeline.from_pretrained(folder)")
        if router_mode is not None:
            ensemble.router_mode = _check_mode(ensemble.router.head, router_mode)
        return ensemble

    def __init__(self, ensemble: ParisPipeline, router_mode: str | None = None) -> None:  # never runs (__new__)
        super().__init__()


def ensemble_velocity(experts, router, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                      strategy: Strategy, *, guidance: float = 1.0, generator: torch.Generator | None = None,
                      offload_to: torch.device | None = None, router_mode: str | None = None):
    """One step of the ensemble: (mixed velocity, posterior, weights). Runs only the experts that some row
    selects, each once on all of its rows; with `offload_to`, an expert visits x's device only while it runs.
    `router_mode`: how the router's posterior is formed (default: its head's, expert.router.Router.posterior)."""
    ts = t.expand(x.shape[0]).to(x)
    with precision(router, x.device):
        probs = router.posterior(x, ts, cond, null, router_mode)
    weights = routing_weights(probs, strategy, generator)
    velocities: dict[int, torch.Tensor] = {}
    for k in torch.nonzero(weights.sum(0) > 0).flatten().tolist():
        rows = torch.nonzero(weights[:, k] > 0).flatten()
        expert = experts[k]
        if offload_to is not None:
            expert.to(x.device)
        v = torch.zeros_like(x, dtype=torch.float32)
        v[rows] = velocity(expert, x[rows], t, cond[rows], null[rows], guidance)
        velocities[k] = v
        if offload_to is not None:
            expert.to(offload_to)
    return mix(weights, velocities, x), probs, weights


def _as_output(videos: torch.Tensor, output_type: str):
    """N×T×H×W×3 uint8 videos in the form diffusers' video pipelines return for `output_type`."""
    if output_type == "uint8":
        return videos.numpy()
    if output_type == "pil":
        from PIL import Image

        return [[Image.fromarray(f) for f in video] for video in videos.numpy()]
    unit = videos.float() / 255.0
    return unit.permute(0, 1, 4, 2, 3).contiguous() if output_type == "pt" else unit.numpy()


def _load_wan(directory: Path, text_conditioning: str = "paris",
              prediction: str | None = None) -> WanTransformer3DModel:
    """`config.json` + `diffusion_pytorch_model.safetensors` (what `save_pretrained` writes), built from the
    config (with the preset's text conditioning and prediction, expert.backbone.condition_on_text and
    predict_clean_sample) and filled strictly, so that a file that does not fit is an error, not a silent
    partial load."""
    try:
        config = {k: v for k, v in json.loads((directory / "config.json").read_text()).items()
                  if k not in ("text_conditioning", "prediction")}
        if text_conditioning == "wan" and prediction != "x":
            model = WanTransformer3DModel.from_config(config)
        else:
            model = ParisWanTransformer3DModel.from_config(
                {**config, "text_conditioning": text_conditioning, "prediction": prediction})
        model.load_state_dict(load_file(directory / "diffusion_pytorch_model.safetensors"))
    except (OSError, ValueError, RuntimeError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IntegrityError(f"{directory} does not hold a loadable Wan transformer: {detail}") from None
    return model


def _library_class(model: torch.nn.Module) -> list[str]:
    """[library, class] of an expert as `model_index.json` names it: diffusers' Wan, or ours (expert.backbone)."""
    if isinstance(model, ParisWanTransformer3DModel):
        return ["paris_node", "ParisWanTransformer3DModel"]
    return ["diffusers", "WanTransformer3DModel"]


def _check_mode(head: RouterHead, mode: str | None) -> str:
    """`mode` (default: the head's) if this router can serve it, else a one-line error naming what it can."""
    mode = mode or head.default_mode
    if mode not in head.modes:
        raise ParisError(f"router mode {mode!r} is not available for this ensemble: its router offers "
                         f"{', '.join(head.modes)}")
    return mode


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _read_index(directory: Path) -> dict:
    path = directory / MODEL_INDEX
    if not path.is_file():
        raise IntegrityError(f"{directory} is not an ensemble folder (no {MODEL_INDEX})")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise IntegrityError(f"{path} is not valid JSON") from None
    if index.get("_class_name") not in ("ParisPipeline", [ENTRY_MODULE, "ParisPipeline"]):
        raise IntegrityError(f"{directory} holds a {index.get('_class_name')!r}, not a ParisPipeline")
    for rel, digest in index.get("files", {}).items():
        f = directory / rel
        if ".." in Path(rel).parts or not f.is_file():
            raise IntegrityError(f"ensemble {directory} is missing {rel}")
        if file_sha256(f) != digest:
            raise IntegrityError(f"ensemble {directory}: {rel} is corrupt (its hash does not match {MODEL_INDEX})")
    return index


def assemble(expert_checkpoints: list[Path], router_checkpoint: Path, out: Path, *, extra: dict | None = None,
             clusters: list[int] | None = None, router_mode: str | None = None) -> Path:
    """Build the ensemble folder from local checkpoints (EMA weights), verifying each and that they agree.
    `clusters`: which of the router's outputs the experts are, for a partial ensemble (default: all, in order)."""
    from expert.checkpoint import read_group, read_meta, resolve_checkpoint
    from expert.sampling import load_expert

    if not expert_checkpoints:
        raise ParisError("an ensemble needs at least one expert checkpoint")
    loaded = [load_expert(expert_checkpoints[0])]
    loaded += [load_expert(p, like=loaded[0]) for p in expert_checkpoints[1:]]  # the encoder and VAE once
    base = loaded[0].preset
    run_id = loaded[0].meta.run_id
    expected = clusters if clusters is not None else list(range(len(loaded)))
    if len(expected) != len(loaded):
        raise ParisError(f"{len(loaded)} experts given for clusters {expected}")
    for i, e in enumerate(loaded):
        if e.meta.kind != "expert":
            raise ParisError(f"{expert_checkpoints[i]} is a {e.meta.kind} checkpoint, not an expert")
        if e.meta.run_id is None or e.meta.run_id != run_id:
            raise ParisError(f"expert {i} ({expert_checkpoints[i]}) belongs to run {e.meta.run_id or '(none)'}, "
                             f"not {run_id or '(none)'}: an ensemble is assembled from one run's checkpoints")
        if e.preset.backbone != base.backbone or e.preset.text != base.text:
            raise ParisError(f"expert {i} ({expert_checkpoints[i]}) was trained with another model config")
    rpath = resolve_checkpoint(Path(router_checkpoint))
    rmeta = read_meta(rpath)
    if rmeta.kind != "router" or rmeta.preset.router is None:
        raise ParisError(f"{router_checkpoint} is not a router checkpoint")
    if rmeta.run_id != run_id or rmeta.cluster is not None:
        raise ParisError(f"the router ({router_checkpoint}) belongs to run {rmeta.run_id or '(none)'}, "
                         f"not {run_id}")
    head = rmeta.preset.router
    if clusters is not None and clusters != list(range(head.num_experts)):
        try:  # validated, not model_copy'd: keep must name outputs the router has
            head = RouterHead.model_validate({**head.model_dump(), "keep": tuple(clusters)})
        except ValidationError as e:
            raise ParisError(f"cannot keep router outputs {clusters}: {e.errors()[0]['msg']}") from None
    if head.routed != len(loaded):
        raise ParisError(f"the router routes {head.routed} experts, {len(loaded)} were given")
    for i, e in enumerate(loaded):
        if e.meta.cluster != expected[i]:
            raise ParisError(f"expert {i} ({expert_checkpoints[i]}) was trained on cluster {e.meta.cluster}, "
                             f"expected cluster {expected[i]}")
    router = Router(rmeta.preset.backbone, head, loaded[0].text.width)
    router.load_state_dict(read_group(rpath, rmeta, "ema"))
    pipe = ParisPipeline([e.model for e in loaded], router, loaded[0].text,
                         FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0), loaded[0].codec, base,
                         router_mode)
    info = {"experts": [{"cluster": e.meta.cluster, "step": e.meta.step, "run_id": e.meta.run_id} for e in loaded],
            "router": {"step": rmeta.step, "run_id": rmeta.run_id, "mode": pipe.router_mode}, **(extra or {})}
    pipe.save_pretrained(out, extra=info)
    return Path(out)
