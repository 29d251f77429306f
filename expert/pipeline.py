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
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from expert.assets import register_asset
from expert.backbone import PixelCodec, build_codec, condition_on_text, predict_clean_sample
from expert.router import CaptionPrior, Router
from expert.routing import Strategy, mix, parse_strategy, routing_weights
from expert.sampling import encode_prompts, velocity
from expert.text import TextEncoder, write_tokenizer
from expert.vae import VaeCodec
from protocol.canonical import file_sha256
from protocol.errors import IntegrityError, ParisError
from protocol.model import ExpertPreset, RouterHead, TextEncoderConfig

MODEL_INDEX = "model_index.json"
PRIOR_FILE = "caption_prior.safetensors"


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

    @property
    def device(self) -> torch.device:  # diffusers infers it from registered modules; ours are not all registered
        return self.execution_device

    def to(self, device: torch.device | str, *, offload: bool = False) -> ParisPipeline:  # type: ignore[override]
        """Move the router, text encoder and codec to `device`; the experts too unless `offload`."""
        self.execution_device = torch.device(device)
        for m in (self.router, self.text_encoder, self.codec):
            m.to(self.execution_device)
        for e in self.experts:
            e.to("cpu" if offload else self.execution_device)
        return self

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
        (tmp / "text_encoder").mkdir()
        (tmp / "text_encoder" / "config.json").write_text(self.text_encoder.config.model_dump_json())
        save_file({k: v.contiguous() for k, v in self.text_encoder.state_dict().items()},
                  tmp / "text_encoder" / "model.safetensors")
        self.scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "paris_config.json").write_text(self.preset.model_dump_json())
        if isinstance(self.codec, VaeCodec):  # the asset's own bytes: its CID still names them
            shutil.copytree(self.codec.vae_dir, tmp / "vae")
        write_tokenizer(tmp / "tokenizer", self.text_encoder.config.context_length)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        index = {"_class_name": "ParisPipeline", "_diffusers_version": _diffusers_version(),
                 "num_experts": len(self.experts), "router": ["paris_node", "Router"],
                 "text_encoder": ["paris_node", "TextEncoder"],
                 "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 **{f"expert_{k}": ["diffusers", "WanTransformer3DModel"] for k in range(len(self.experts))},
                 "paris": extra or {}, "files": files}
        (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, router_mode: str | None = None,  # type: ignore[override]
                        **_) -> ParisPipeline:
        """Load and verify an ensemble folder (every file's SHA-256 against `model_index.json`); `router_mode`
        overrides the mode the folder records."""
        directory = Path(directory)
        index = _read_index(directory)
        try:
            preset = ExpertPreset.model_validate_json((directory / "paris_config.json").read_bytes())
            head = RouterHead.model_validate_json((directory / "router" / "router_config.json").read_bytes())
            text_cfg = TextEncoderConfig.model_validate_json((directory / "text_encoder" / "config.json").read_bytes())
        except (OSError, ValidationError) as e:
            raise IntegrityError(f"ensemble {directory} has a missing or malformed config: {e}") from None
        k = int(index.get("num_experts", 0))
        if k < 1 or head.routed != k:
            raise IntegrityError(f"ensemble {directory}: the router has {head.routed} outputs for {k} experts")
        tc = preset.backbone.text_conditioning
        experts = [_load_wan(directory / f"expert_{i}", tc, preset.backbone.prediction).eval() for i in range(k)]
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
        return cls(experts, router, text, scheduler, codec, preset, router_mode or head.mode)

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, strategy: str | Strategy = "top1", num_inference_steps: int = 30,
                 guidance_scale: float = 4.0, seed: int = 0, num_videos: int = 1, offload: bool = False,
                 record_routing: bool = False, router_mode: str | None = None,
                 on_step=None) -> tuple[np.ndarray, list[dict]]:
        """Videos (N×T×H×W×3 uint8) and, when `record_routing`, the per-step routing weights."""
        strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        mode = _check_mode(self.router.head, router_mode) if router_mode else self.router_mode
        prompts = [prompt] * num_videos if isinstance(prompt, str) else list(prompt)
        dev = self.execution_device
        cond, null = (s.to(dev) for s in encode_prompts(self.text_encoder, prompts))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((len(prompts), *self.codec.latent_shape()), generator=g).to(dev)
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        record: list[dict] = []
        for i, t in enumerate(self.scheduler.timesteps):
            v, probs, weights = ensemble_velocity(self.experts, self.router, x, t, cond, null, strat,
                                                  guidance=guidance_scale, generator=g, router_mode=mode,
                                                  offload_to=torch.device("cpu") if offload else None)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if record_routing:
                record.append({"step": i, "t": round(float(t) / 1000, 5), "router_mode": mode,
                               "posterior": probs.cpu().numpy().round(5).tolist(),
                               "weights": weights.cpu().numpy().round(5).tolist()})
            if on_step:
                on_step(i + 1, num_inference_steps)
        return self.codec.decode(x).cpu().numpy(), record

def ensemble_velocity(experts, router, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                      strategy: Strategy, *, guidance: float = 1.0, generator: torch.Generator | None = None,
                      offload_to: torch.device | None = None, router_mode: str | None = None):
    """One step of the ensemble: (mixed velocity, posterior, weights). Runs only the experts that some row
    selects, each once on all of its rows; with `offload_to`, an expert visits x's device only while it runs.
    `router_mode`: how the router's posterior is formed (default: its head's, expert.router.Router.posterior)."""
    ts = t.expand(x.shape[0]).to(x)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
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


def _load_wan(directory: Path, text_conditioning: str = "paris",
              prediction: str | None = None) -> WanTransformer3DModel:
    """`config.json` + `diffusion_pytorch_model.safetensors` (what `save_pretrained` writes), built from the
    config (with the preset's text conditioning and prediction, expert.backbone.condition_on_text and
    predict_clean_sample) and filled strictly, so that a file that does not fit is an error, not a silent
    partial load."""
    try:
        config = json.loads((directory / "config.json").read_text())
        model = WanTransformer3DModel.from_config(config)
        if text_conditioning == "paris":
            condition_on_text(model)
        if prediction == "x":
            predict_clean_sample(model)
        model.load_state_dict(load_file(directory / "diffusion_pytorch_model.safetensors"))
    except (OSError, ValueError, RuntimeError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IntegrityError(f"{directory} does not hold a loadable Wan transformer: {detail}") from None
    return model


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
    if index.get("_class_name") != "ParisPipeline":
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

    loaded = [load_expert(p) for p in expert_checkpoints]
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
