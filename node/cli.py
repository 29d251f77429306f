"""The `paris-node` command line. User mistakes end in one red line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from node.cli_options import DEMO_STEPS, CheckpointingOpt, CompileOpt, RouterModeOpt
from node.console import console, fail, out, progress
from protocol.errors import ParisError

# open_clip scripts a helper at import; torch 2.14 warns about torch.jit.script on every CLI start
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Join a swarm that trains a decentralized video diffusion model (K experts + a router).")
data_app = typer.Typer(no_args_is_help=True, help="Build data sets: the built-in synthetic one, or your videos.")
run_app = typer.Typer(no_args_is_help=True, help="Create run specs (clustered data + model preset).")
app.add_typer(data_app, name="data")
ensemble_app = typer.Typer(no_args_is_help=True, help="Assemble ensembles from local checkpoints.")
app.add_typer(run_app, name="run")
app.add_typer(ensemble_app, name="ensemble")

GpuOpt = Annotated[str, typer.Option("--gpu", help="CUDA device index, or 'cpu'.")]


def _size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter("expected HxW, for example 32x32") from None
    if h < 8 or w < 8:
        raise typer.BadParameter("frames must be at least 8x8")
    return h, w


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the shards and manifest into.")],
    clips: Annotated[int, typer.Option(min=1, help="Number of clips.")] = 2000,
    seed: Annotated[int, typer.Option(help="Data set seed: same arguments, byte-identical shards.")] = 0,
    frames: Annotated[int, typer.Option(min=2, help="Frames per clip.")] = 16,
    size: Annotated[str, typer.Option(help="Frame size HxW.")] = "32x32",
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
) -> None:
    """The built-in procedural text-to-video data set ("moving shapes")."""
    from expert.shards import tokenize
    from expert.synth_dataset import write_synthetic

    h, w = _size(size)
    tokenize([""])  # load the tokenizer before timing generation
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("generating clips", total=clips)
        manifest = write_synthetic(out_dir, clips=clips, seed=seed, frames=frames, height=h, width=w,
                                   on_progress=lambda n: bar.advance(task, n))
    dt = time.perf_counter() - t0
    summary = {"data_id": manifest.data_id, "clips": manifest.total_clips, "shards": len(manifest.shards),
               "out": str(out_dir), "clips_per_s": round(clips / dt, 1)}
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"wrote {clips} clips in {len(manifest.shards)} shards to {out_dir} "
                  f"({summary['clips_per_s']} clips/s), data id {manifest.data_id}")


@data_app.command("prepare")
def data_prepare(
    videos: Annotated[Path, typer.Option(help="Folder of videos (searched recursively; a Hugging Face VideoFolder "
                                         "with metadata.jsonl; or webdataset .tar shards), or one .tar shard.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the shards and manifest into.")],
    captions: Annotated[Path | None, typer.Option(help="Captions table: CSV, TSV, JSONL or Parquet (OpenVid, "
                                                  "WebVid, Panda-70M columns are recognised). Not needed for a "
                                                  "VideoFolder or webdataset shards.")] = None,
    video_column: Annotated[str | None, typer.Option(help="The captions table's column naming the video file "
                                                     "(detected from common names when left out).")] = None,
    caption_column: Annotated[str | None, typer.Option(help="The column holding the caption (detected from "
                                                       "common names when left out).")] = None,
    frames: Annotated[int, typer.Option(min=2, help="Frames per clip.")] = 16,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second of the clips (resampled from each "
                                       "source's own rate): a clip spans frames/fps seconds.")] = 8.0,
    size: Annotated[str, typer.Option(help="Output frame size HxW (aspect-preserving resize, then --crop).")]
    = "64x64",
    crop: Annotated[str, typer.Option(help="centre: scale to cover and cut the middle; pad: scale to fit, "
                                      "black borders.")] = "centre",
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding processes, one core each (0: decode in "
                                                "this one). Default: one per CPU core.")] = None,
    clips_per_shard: Annotated[int, typer.Option(min=1, help="Clips per shard file (an interrupted run "
                                                 "continues from the last whole shard).")] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Real clips + captions → verified shards. Unreadable, too short or uncaptioned videos are skipped and
    listed in OUT/prepare-report.json. Interrupted? Run the same command again: it continues."""
    from expert.prepare import REPORT_NAME, prepare_videos
    from expert.video_decode import CROPS

    h, w = _size(size)
    crop = "centre" if crop == "center" else crop
    if crop not in CROPS:
        raise typer.BadParameter(f"expected one of {', '.join(CROPS)}", param_hint="--crop")
    procs = (os.cpu_count() or 1) if workers is None else workers
    with progress() as bar:
        task = bar.add_task("decoding videos", total=None)
        report = prepare_videos(videos, captions, out_dir, frames=frames, height=h, width=w, fps=fps,
                                crop=crop,  # type: ignore[arg-type]  (checked against CROPS above)
                                workers=procs, clips_per_shard=clips_per_shard, video_column=video_column,
                                caption_column=caption_column, on_total=lambda n: bar.update(task, total=n),
                                on_progress=lambda n: bar.advance(task, n))
    if json_out:
        out.print_json(report.model_dump_json(exclude={"key"}))
        return
    resumed = f" ({report.resumed} kept from an interrupted run)" if report.resumed else ""
    out.print(f"wrote {report.written} clips{resumed} ({report.layout}) to {out_dir}, data id {report.data_id}")
    for skip in report.skipped[:20]:
        console.print(f"[yellow]skipped[/] {skip.file}: {skip.reason}", highlight=False)
    if report.skipped:
        more = f"{len(report.skipped) - 20} more; " if len(report.skipped) > 20 else ""
        console.print(f"{len(report.skipped)} skipped ({more}all listed in {out_dir / REPORT_NAME})", highlight=False)


@run_app.command("init")
def run_init(
    data: Annotated[Path, typer.Option(help="A data set folder (from `data synth` or `data prepare`).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the run spec (JSON).")],
    clusters: Annotated[int | None, typer.Option(min=1, help="Number of clusters K (= experts).")] = None,
    config: Annotated[Path | None, typer.Option(help="A run config file (TOML, see docs/cli.md): preset, clip size "
                                                "and fps, model shape, training, model assets. Flags given "
                                                "here win over it.")] = None,
    preset: Annotated[str | None, typer.Option(help="Expert preset: tiny, small (default), tiny-latent, base, "
                                               "large.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for clustering and training (default 0).")] = None,
    name: Annotated[str | None, typer.Option(help="A human name for the run (default 'run').")] = None,
    target_steps: Annotated[int | None, typer.Option(min=1, help="Training steps per expert.")] = None,
    vae: Annotated[Path | None, typer.Option(help="A diffusers VAE folder (latent presets; its class from its "
                                             "config.json: Wan 2.1/2.2, LTX-Video, HunyuanVideo, CogVideoX, "
                                             "Cosmos, or an image AutoencoderKL per frame): put into the home's "
                                             "content store, named by CID in the run.")] = None,
    text_model: Annotated[str | None, typer.Option(help="open_clip architecture of the text tower (e.g. "
                                                   "ViT-L-14; random init from the run's seed without "
                                                   "--text-weights).")] = None,
    text_weights: Annotated[Path | None, typer.Option(help="open_clip weights file for the text tower (any "
                                                      "preset): stored and named the same way.")] = None,
    text_encoder: Annotated[Path | None, typer.Option(
        "--text-encoder", help="A transformers text encoder folder (T5/UMT5 encoder or CLIP text model with its "
        "tokenizer, as save_pretrained writes it; any preset): every caption's states are computed once here "
        "and stored with the data, so trainers and verifiers never load it.")] = None,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="A diffusers WanTransformer3DModel folder every expert starts from (its shape from its "
        "config.json; stored and named by CID the same way; verifiers rebuild the same start).")] = None,
    clip_model: Annotated[str | None, typer.Option(help="open_clip architecture for embedding clips.")] = None,
    clip_weights: Annotated[Path | None, typer.Option(help="open_clip weights to embed clips with "
                                                      "(stored and named the same way).")] = None,
    dinov2: Annotated[Path | None, typer.Option(help="A DINOv2 folder (transformers Dinov2Model, e.g. a "
                                                "facebook/dinov2-base snapshot) to embed clips with, as Paris "
                                                "did (stored and named the same way).")] = None,
    gpu: Annotated[str, typer.Option("--gpu", help="Device that embeds clips and encodes latents: a CUDA index "
                                     "or 'cpu'.")] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    home: Annotated[Path, typer.Option(help="The identity that will own the run (the daemon's home).")]
    = Path("~/.paris"),
) -> None:
    """Cluster the data and write a run spec owned by this home's identity; prints its run id. Model assets
    go into the home's content store (the daemon provides them); a latent preset's clips are encoded once."""
    from protocol.data import DataManifest
    from protocol.run_config import load_run_config

    cfg = load_run_config(config) if config is not None else None
    if cfg is not None:  # the flags given win; the spec records the config as it was applied
        base = config.parent
        vae, text_weights, clip_weights, dinov2 = (flag or cfg.path(f, base) for flag, f in
                                                   ((vae, "vae"), (text_weights, "text_weights"),
                                                    (clip_weights, "clip_weights"), (dinov2, "dinov2")))
        text_model, clip_model = text_model or cfg.models.text_model, clip_model or cfg.models.clip_model
        cfg = cfg.with_flags(preset=preset, clusters=clusters, seed=seed, name=name, target_steps=target_steps)
        preset, clusters, seed, name = cfg.preset, cfg.clusters, cfg.seed, cfg.name
        target_steps = None  # in cfg.train now
    preset, seed, name = preset or "small", seed or 0, name or "run"
    if clusters is None:
        fail("give --clusters K (or clusters = K in the --config file)")
    if clip_weights is not None and dinov2 is not None:
        fail("embed clips with one network: give --clip-weights or --dinov2, not both")
    source = DataManifest.load(data)  # not a data set: said before the model stack is imported
    if source.latents is not None:
        fail(f"--data {data} holds latents: give the pixel data set (run init embeds frames to cluster them)")
    from expert.device import resolve_device

    device = resolve_device(gpu)
    from expert.presets import LATENT_PRESETS, configure, get_preset
    from expert.run_init import init_run
    from node.assets import import_asset
    from protocol.run import RunSpec
    from swarm.identity import load_identity

    if vae is not None and preset not in LATENT_PRESETS:
        fail(f"--vae is for the latent presets ({', '.join(LATENT_PRESETS)}); {preset!r} trains on pixels")
    channels, latent = None, None
    if vae is not None:  # measured from its config alone (no weights read): a VAE that cannot fit fails here
        from expert.presets import clip_shape
        from expert.vae import probe_vae

        latent = probe_vae(vae.expanduser(), *clip_shape(preset, cfg)).latent
        channels = latent[0]
    home = home.expanduser()
    creator = load_identity(home).public_key_bytes.decode()
    with console.status("putting the model assets into the content store"):
        assets = {k: import_asset(home, v) for k, v in
                  (("vae", vae), ("text", text_weights), ("clip", clip_weights), ("dinov2", dinov2),
                   ("encoder", text_encoder), ("init", init_from))
                  if v is not None}
    encoder = None if text_encoder is None else (assets["encoder"], text_encoder.expanduser())
    start = None if init_from is None else (assets["init"], init_from.expanduser())
    chosen = configure(get_preset(preset, vae=assets.get("vae"), vae_channels=channels, text_model=text_model,
                                  text_weights=assets.get("text"), text_encoder=encoder, init_from=start), cfg)
    if latent is not None:
        from expert.presets import check_latent_patch

        check_latent_patch(chosen.backbone, latent)
    with progress() as bar:
        task = bar.add_task(f"embedding clips ({device})", total=None)
        spec = init_run(data, clusters, preset=chosen, seed=seed, name=name, clip_model=clip_model,
                        clip_weights=assets.get("clip"), dinov2=assets.get("dinov2"), target_steps=target_steps,
                        config=cfg, device=device, on_total=lambda n: bar.update(task, total=n),
                        on_progress=lambda n: bar.advance(task, n))
    spec = RunSpec.model_validate({**spec.model_dump(), "creator": creator})
    from expert.latent_data import needs_encoding

    if needs_encoding(spec.preset):
        from node.bundle import ensure_latents

        what = " and ".join(w for w, on in (("clips into latents", spec.preset.backbone.space == "latent"),
                                            ("captions into text states", spec.preset.text.stored)) if on)
        with progress() as bar:
            task = bar.add_task(f"encoding {what} (once)", total=None)
            ensure_latents(spec, data, home / "runs" / spec.run_id, device=device,
                           on_total=lambda n: bar.update(task, total=n), on_progress=lambda n: bar.advance(task, n))
    spec.save(out_file)
    spec.save(home / "runs" / spec.run_id / "run.json")  # `run show RUN_ID --home` finds it here
    b = spec.balance
    if json_out:
        out.print_json(json.dumps({"run_id": spec.run_id, "out": str(out_file), "balance": b.model_dump()}))
        return
    from rich.table import Table

    table = Table(title=f"run {spec.run_id}: {clusters} clusters of {spec.data.total_clips} clips")
    table.add_column("cluster")
    table.add_column("clips", justify="right")
    table.add_column("majority attributes")
    for c in b.clusters:
        table.add_row(str(c.cluster), str(c.size), ", ".join(f"{k}={v}" for k, v in c.majority.items()))
    out.print(table)
    out.print(f"sizes: largest {b.largest}, smallest {b.smallest} (ratio {b.ratio})")
    for attr, p in b.purity.items():
        out.print(f"purity[{attr}] = {p:.3f} (random partition {b.purity_chance[attr]:.3f}, NMI {b.nmi[attr]:.3f})",
                  markup=False, highlight=False)
    out.print(f"run id {spec.run_id} written to {out_file}")


def _find_run(run: str, home: Path):
    """A run spec file, or the spec of run id `run` that `home` made (runs/<id>/run.json) or published
    (runs/<id>/bundle/run.json)."""
    from protocol.run import RunSpec

    path = Path(run).expanduser()
    if path.is_file():
        return RunSpec.load(path)
    if run.startswith("run-") and "/" not in run:
        for found in (home / "runs" / run / "run.json", home / "runs" / run / "bundle" / "run.json"):
            if found.is_file():
                spec = RunSpec.load(found)
                if spec.run_id != run:
                    raise ParisError(f"{found} holds run {spec.run_id}, not {run}")
                return spec
        raise ParisError(f"{home} knows no run {run} (give the run's .json file, or the --home that made it)")
    raise ParisError(f"{run} is neither a run spec file nor a run id")


@run_app.command("show")
def run_show(
    run: Annotated[str, typer.Argument(help="A run spec file, or a run id that --home knows (made or "
                                       "published there).")],
    home: Annotated[Path, typer.Option(help="The home to look for a run id in.")] = Path("~/.paris"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's settings as JSON.")] = False,
) -> None:
    """Print a run's settings: the run config it was made from (or its preset's, as a config) with its data,
    clusters and model assets."""
    from expert.presets import effective_config

    spec = _find_run(run, home.expanduser())
    cfg = effective_config(spec)
    summary = {"run_id": spec.run_id, "name": spec.name, "data_id": spec.data.data_id,
               "clips": spec.data.total_clips, "data_clip": {"frames": spec.data.frames, "height": spec.data.height,
                                                             "width": spec.data.width, "fps": spec.data.fps},
               "clusters": spec.num_clusters, "cluster_sizes": list(spec.balance.sizes),
               "holdout_clips": [len(h) for h in spec.validation.holdout], "embedding": spec.embedding.method,
               "from_config": spec.config is not None, "config": cfg.model_dump(exclude_none=True),
               "preset": spec.preset.model_dump(mode="json", exclude_none=True)}
    if json_out:
        out.print_json(json.dumps(summary))
        return
    import tomlkit

    d = spec.data
    out.print(f"run {spec.run_id} ({spec.name}): {spec.num_clusters} clusters of {d.total_clips} clips "
              f"(sizes {', '.join(map(str, spec.balance.sizes))}), embedded with {spec.embedding.method}",
              highlight=False)
    out.print(f"data {d.data_id}: {d.frames}×{d.height}×{d.width} clips at {d.fps:g} fps ({d.source})",
              highlight=False)
    assets = {k: v for k, v in (("vae", spec.preset.backbone.vae), ("text weights", spec.preset.text.weights),
                                (f"{spec.embedding.method} weights", spec.embedding.weights)) if v is not None}
    for what, asset in assets.items():
        out.print(f"{what}: {asset.name} ({asset.bytes} bytes), {asset.cid}", highlight=False)
    made = "made from a run config" if spec.config is not None else f"made from preset {spec.preset.name!r}"
    out.print(f"# its settings as a run config ({made}; local paths are not recorded)", highlight=False)
    table = {k: v for k, v in cfg.model_dump(exclude_none=True).items() if v != {}}
    out.print(tomlkit.dumps(table).rstrip(), markup=False, highlight=False)


def _run_training(trainer, steps: int, out_dir: Path, checkpoint_every: int | None, *, label: str,
                  tensorboard: Path | None = None) -> bool:
    """Drive `trainer.train` with a progress bar (log lines when not on a terminal); the first Ctrl-C or
    SIGTERM stops at the next step boundary with a final checkpoint, a second one aborts. True if stopped.
    `tensorboard`: every step's loss and every checkpoint's validation loss go there (node.tensorboard)."""
    from rich.progress import TextColumn

    board = slot = None
    if tensorboard is not None:
        from node.tensorboard import LossBoard, slot_of

        board, slot = LossBoard(tensorboard), slot_of(trainer)

    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        console.print("[yellow]stopping at the next step boundary (Ctrl-C again to abort)[/]")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    last = {}
    try:
        with progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s")) as bar:
            task = bar.add_task(label, total=steps, loss="-", sps="-")

            def on_progress(p):
                last["p"] = p
                if board is not None:
                    board.train(slot, p.step, p.loss)
                loss = "skipped" if p.loss is None else f"{p.loss_ema:.4f}"
                bar.update(task, advance=1, loss=loss, sps=f"{p.samples_per_s:.1f}")
                if not console.is_terminal and (p.step % 25 == 0 or p.step == 1):  # logs, not a live bar
                    console.print(f"{label} step {p.step} loss {loss} {p.samples_per_s:.1f} samples/s",
                                  highlight=False)

            def on_checkpoint(path, meta):
                console.print(f"checkpoint step {meta.step} → {path}", highlight=False)
                if board is not None:
                    board.validation(slot, meta.step, meta.val_loss)

            trainer.train(steps, on_progress=on_progress, checkpoint_dir=out_dir,
                          checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        if board is not None:
            board.close()
    p = last.get("p")
    if p is not None and p.skipped_total:
        console.print(f"[yellow]{p.skipped_total} step(s) were skipped because the loss or gradient was not finite[/]")
    return stop.is_set()


HomeAssetsOpt = Annotated[Path, typer.Option(
    help="Home whose content store holds the run's model assets and latents (`run init --home`).")]


TensorboardOpt = Annotated[Path | None, typer.Option(
    help="Write the training loss of every step and the validation loss of every checkpoint here as TensorBoard "
         "event files (one run per slot: `tensorboard --logdir DIR`).")]
VaeDirOpt = Annotated[Path | None, typer.Option(
    "--vae", help="The run's VAE folder, if not in --home's content store (checked against the CID the run names).")]
TextEncoderOpt = Annotated[Path | None, typer.Option(
    "--text-encoder", help="The run's text-encoder weights, if not in --home's content store (checked the same way).")]


def _model_assets(checkpoint: Path | None, home: Path, vae: Path | None, text_encoder: Path | None) -> None:
    """Make the VAE and text encoder of `checkpoint`'s run buildable: the given paths (each checked against
    the CID the run names) or the home's content store (where `run init` and `fetch` put them)."""
    from expert.checkpoint import read_meta, resolve_checkpoint
    from node.assets import provide_assets

    if checkpoint is None:
        return
    preset = read_meta(resolve_checkpoint(checkpoint)).preset
    provide_assets(preset, home, {"video VAE": vae, "text-encoder weights": text_encoder})


def _local_assets(spec, home: Path, data: Path | None) -> Path | None:
    """Register the run's model assets that `home`'s store holds; for a latent run with no --data, its clips
    encoded once by `run init` (home/runs/<run>/latents) when they are there."""
    from node.assets import locate_assets, spec_assets

    home = home.expanduser()
    locate_assets(home, spec_assets(spec))
    from expert.latent_data import needs_encoding

    if data is None and needs_encoding(spec.preset):
        from node.bundle import latent_cache

        cache = latent_cache(home / "runs" / spec.run_id)
        if (cache / "manifest.json").is_file():
            return cache
    return data


@app.command("train-local")
def train_local(
    run: Annotated[Path, typer.Option(help="Run spec from `run init`.")],
    cluster: Annotated[int, typer.Option(min=0, help="Which cluster's expert to train.")],
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps to run now.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint folder (step-*/ and LATEST).")],
    resume: Annotated[Path | None, typer.Option(help="Resume from this checkpoint or training folder.")] = None,
    data: Annotated[Path | None, typer.Option(help="Data folder, if not where `run init` saw it.")] = None,
    gpu: GpuOpt = "cpu",
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Steps between checkpoints.")] = None,
    compile_model: CompileOpt = False,
    grad_checkpointing: CheckpointingOpt = "auto",
    home: HomeAssetsOpt = Path("~/.paris"),
    ddp: Annotated[bool, typer.Option("--ddp", help="Train on every device of --gpu (then a list: 0,1 / all / cpu,cpu) "
                                      "with DistributedDataParallel: one process per device, the batch split.")]
    = False,
    tensorboard: TensorboardOpt = None,
) -> bool:
    """Train one expert on its cluster with no swarm (the daemon drives the same code)."""
    from protocol.run import RunSpec

    spec = RunSpec.load(run)  # a wrong path, cluster or device is answered before the model stack is imported
    spec.cluster_clips(cluster)
    from expert.device import resolve_device, resolve_devices

    devices = resolve_devices(gpu) if ddp else [resolve_device(gpu)]
    if ddp:
        from expert.ddp import check_world

        try:
            check_world(spec.preset.train.batch_size, len(devices))
        except ParisError as e:
            fail(str(e))
    from expert.efficiency import Efficiency
    from expert.train_expert import trainer_for_run

    data = _local_assets(spec, home, data)
    with console.status(f"loading run {spec.run_id}, cluster {cluster}"):
        trainer = trainer_for_run(spec, cluster, data_dir=data, device=devices[0], efficiency=Efficiency(
            compile=compile_model, grad_checkpointing=grad_checkpointing))
        if resume:
            meta = trainer.load(resume)
            console.print(f"resumed from step {meta.step}")
    label = f"expert {cluster}" + (f" (DDP ×{len(devices)})" if ddp else "")
    with contextlib.ExitStack() as stack:
        if ddp:  # this process is rank 0; the others are spawned, build the same trainer and follow its steps
            from expert.ddp import DdpGroup, ExpertRecipe

            with console.status(f"starting {len(devices) - 1} more rank(s) on {', '.join(map(str, devices[1:]))}"):
                stack.enter_context(DdpGroup(trainer, [str(d) for d in devices], ExpertRecipe.of(trainer)))
        stopped = _run_training(trainer, steps, out_dir, checkpoint_every, label=label, tensorboard=tensorboard)
    loss = "n/a" if trainer.loss_ema is None else f"{trainer.loss_ema:.4f}"
    where = f", trained on {len(devices)} devices" if ddp else ""
    out.print(f"expert {cluster} at step {trainer.step}, loss {loss}{where}; checkpoint in {out_dir}")
    return stopped


@app.command("train-router")
def train_router(
    run: Annotated[Path, typer.Option(help="Run spec from `run init`.")],
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps to run now.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint folder (step-*/ and LATEST).")],
    resume: Annotated[Path | None, typer.Option(help="Resume from this checkpoint or training folder.")] = None,
    data: Annotated[Path | None, typer.Option(help="Data folder, if not where `run init` saw it.")] = None,
    cap: Annotated[int, typer.Option(min=1, help="At most this many clips per cluster (stratified).")] = 2000,
    text: Annotated[bool, typer.Option("--text/--no-text", help="The trunk reads the caption (DDM's joint "
                                       "router; with caption dropout it also serves x_t routing).")] = True,
    light: Annotated[bool, typer.Option("--light/--full-size", help="The light trunk (a few % of an expert's "
                                        "FLOPs) or the experts' own backbone.")] = True,
    caption_prior: Annotated[bool, typer.Option("--caption-prior/--no-caption-prior",
                                                help="Train p(k | caption) beside the trunk.")] = True,
    gpu: GpuOpt = "cpu",
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Steps between checkpoints.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final accuracy report as JSON.")] = False,
    compile_model: CompileOpt = False,
    grad_checkpointing: CheckpointingOpt = "auto",
    home: HomeAssetsOpt = Path("~/.paris"),
    tensorboard: TensorboardOpt = None,
) -> None:
    """Train the run's router with no swarm; reports held-out accuracy per routing mode and noise level.
    The defaults are the router a swarm trains for this run (`--full-size --no-text --no-caption-prior` is
    Paris' x_t router)."""
    import numpy as np

    from expert.device import resolve_device
    from expert.efficiency import Efficiency
    from expert.router_preset import router_preset
    from expert.train_router import router_trainer_for_run
    from expert.validation import router_report
    from protocol.run import RunSpec

    spec = RunSpec.load(run)
    device = resolve_device(gpu)
    data = _local_assets(spec, home, data)
    preset = router_preset(spec.preset, spec.num_clusters, use_text=text, light=light, caption_prior=caption_prior,
                           data_sizes=np.bincount(np.asarray(spec.assignments), minlength=spec.num_clusters))
    with console.status(f"loading run {spec.run_id} for the router"):
        trainer = router_trainer_for_run(spec, data_dir=data, cap=cap, preset=preset, device=device,
                                         efficiency=Efficiency(compile=compile_model,
                                                               grad_checkpointing=grad_checkpointing))
        if resume:
            console.print(f"resumed from step {trainer.load(resume).step}")
    _run_training(trainer, steps, out_dir, checkpoint_every, label="router", tensorboard=tensorboard)
    report = {"step": trainer.step, "loss": trainer.loss_ema, "validation": trainer.validation(),
              **router_report(trainer.ema, trainer.held, device=device)}
    if json_out:
        out.print_json(json.dumps(report))
        return
    out.print(f"router at step {trainer.step}; checkpoint in {out_dir}; held-out accuracy "
              f"({report['samples']} clips):", highlight=False)
    for mode, levels in report["modes"].items():
        out.print(f"  {mode:9} " + "  ".join(f"{t} {v['accuracy']:.2f}" for t, v in levels.items()), highlight=False)


@ensemble_app.command("assemble")
def ensemble_assemble(
    experts: Annotated[list[Path], typer.Option("--expert", help="Expert checkpoint folders, in cluster order.")],
    router: Annotated[Path, typer.Option(help="The router's checkpoint folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Ensemble folder to write.")],
    router_mode: RouterModeOpt = None,
    home: HomeAssetsOpt = Path("~/.paris"),
    vae: VaeDirOpt = None,
    text_encoder_path: TextEncoderOpt = None,
) -> None:
    """Assemble local checkpoints into the diffusers-style ensemble folder that `sample --ensemble` loads
    (a latent run's VAE and the text encoder come from --home's content store, or --vae / --text-encoder)."""
    from expert.pipeline import assemble

    _model_assets(experts[0] if experts else None, home, vae, text_encoder_path)
    with console.status("verifying checkpoints and writing the ensemble"):
        assemble(experts, router, out_dir, router_mode=router_mode)
    out.print(f"wrote the ensemble of {len(experts)} experts to {out_dir}")


@app.command("sample")
def sample_cmd(
    prompt: Annotated[str, typer.Argument(help="What the video should show.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output .mp4 or .gif.")],
    ensemble: Annotated[Path | None, typer.Option(help="An ensemble folder (from fetch / ensemble assemble).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Or one expert: a checkpoint or training folder.")] = None,
    strategy: Annotated[str, typer.Option(help="full, top1, top2, topk:K, threshold:P, sample:K.")] = "top1",
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps.")] = 30,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 4.0,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    num_videos: Annotated[int, typer.Option(min=1, help="Several videos are tiled into a grid.")] = 1,
    routing_out: Annotated[Path | None, typer.Option(help="Write per-step routing weights (JSON).")] = None,
    offload: Annotated[bool, typer.Option(help="Keep idle experts on the CPU (saves device memory).")] = False,
    router_mode: RouterModeOpt = None,
    gpu: GpuOpt = "cpu",
    home: HomeAssetsOpt = Path("~/.paris"),
    vae: VaeDirOpt = None,
    text_encoder_path: TextEncoderOpt = None,
) -> None:
    """Generate a video from an ensemble (router + experts) or from one expert checkpoint (a latent run's VAE
    and the text encoder from --home's content store, or --vae / --text-encoder)."""
    from protocol.atomic import atomic_write_text

    # the user's mistakes first, before the model stack is imported (that takes seconds)
    if (ensemble is None) == (checkpoint is None):
        fail("give exactly one of --ensemble DIR or --checkpoint DIR")
    if out_file.suffix.lower() not in (".mp4", ".gif"):
        fail(f"--out must end in .mp4 or .gif, not {out_file.name!r}")
    if routing_out is not None and ensemble is None:
        fail("--routing-out needs --ensemble (a single expert has no routing)")
    if router_mode is not None and ensemble is None:
        fail("--router-mode needs --ensemble (a single expert has no routing)")
    for what, path in (("--ensemble", ensemble), ("--checkpoint", checkpoint)):
        if path is not None and not path.is_dir():
            fail(f"{what} {path} holds no checkpoint: it is not a folder")
    from expert.routing import parse_strategy

    strat = parse_strategy(strategy)
    from expert.device import resolve_device
    from expert.video_io import grid, write_video

    device = resolve_device(gpu)
    _model_assets(checkpoint, home, vae, text_encoder_path)  # an ensemble folder holds its own
    record: list[dict] = []
    with progress() as bar:
        task = bar.add_task("sampling", total=steps)

        def on_step(i, n):
            bar.update(task, completed=i)

        if ensemble is not None:
            from expert.pipeline import ParisPipeline

            pipe = ParisPipeline.from_pretrained(ensemble, router_mode=router_mode).to(device, offload=offload)
            result = pipe(prompt, strategy=strat, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                          num_videos_per_prompt=num_videos, offload=offload, output_type="uint8",
                          record_routing=routing_out is not None, on_step=on_step)
            videos, record = result.frames, result.routing or []
        else:
            from expert.sampling import load_expert, sample

            expert = load_expert(checkpoint, device)
            videos = sample(expert, prompt, steps=steps, guidance=guidance, seed=seed, num_videos=num_videos,
                            device=device, on_step=on_step)
    video = grid(videos) if num_videos > 1 else videos[0]
    write_video(out_file, video)
    if routing_out is not None:
        atomic_write_text(routing_out, json.dumps({"prompt": prompt, "strategy": str(strat),
                                                   "router_mode": pipe.router_mode, "steps": record}))
    out.print(f"wrote {out_file} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]} before upscaling)")


@app.command("eval")
def eval_cmd(
    ensemble: Annotated[Path | None, typer.Option(help="An ensemble folder to evaluate.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Or one expert checkpoint / training folder.")] = None,
    run: Annotated[str | None, typer.Option(help="Measure on this run's held-out clips (a run spec file or a "
                                            "run id --home knows), per expert and per strategy, instead of "
                                            "the built-in synthetic prompts.")] = None,
    data: Annotated[Path | None, typer.Option(help="With --run: its data folder, if not where `run init` saw "
                                              "it.")] = None,
    prompts: Annotated[Path | None, typer.Option(help="With --run: a prompts file (one per line) instead of the "
                                                 "held-out clips' captions.")] = None,
    strategy: Annotated[str, typer.Option(help="Routing strategy for --ensemble (with --run, a comma-separated "
                                          "list: top1,top2,full).")] = "top1",
    router_mode: RouterModeOpt = None,
    n: Annotated[int, typer.Option("--n", min=2, help="Number of prompts / generated videos.")] = 64,
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps.")] = 30,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 4.0,
    compare_guidance: Annotated[bool, typer.Option(
        "--compare-guidance", help="Also sample without guidance (scale 1) and report both accuracies: "
                                   "guidance that changes nothing means the text is not used.")] = False,
    judge_dir: Annotated[Path, typer.Option("--judge", help="Synthetic-data judge (trained here if missing).")]
    = Path.home() / ".paris" / "synth-judge",
    i3d: Annotated[Path | None, typer.Option("--i3d", help="Local I3D weights (pytorch-i3d rgb_imagenet.pt or "
                                             ".safetensors): adds FVD.")] = None,
    clip_weights: Annotated[Path | None, typer.Option(help="Local open_clip weights: adds CLIP similarity.")] = None,
    clip_model: Annotated[str, typer.Option(help="open_clip architecture of --clip-weights.")] = "ViT-B-32",
    gpu: GpuOpt = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    home: HomeAssetsOpt = Path("~/.paris"),
    vae: VaeDirOpt = None,
    text_encoder_path: TextEncoderOpt = None,
) -> None:
    """Metrics on the built-in data: FVD-synth and prompt-attribute accuracy, plus FVD (I3D) and CLIP
    text-video similarity when their weights are given; with --run, your own run on its held-out clips: each
    expert's validation loss, FVD and CLIP score per expert and per strategy (see docs/cli.md)."""
    from expert.device import resolve_device
    from expert.evaluate import EVAL_SEED, evaluate_synthetic
    from expert.routing import parse_strategy
    from expert.synth_classifier import cached_judge

    if (ensemble is None) == (checkpoint is None):
        fail("give exactly one of --ensemble DIR or --checkpoint DIR")
    if run is None and (data is not None or prompts is not None):
        fail("--data and --prompts measure your own run: give --run RUN too")
    strategies = [part.strip() for part in strategy.split(",") if part.strip()]
    if run is None and len(strategies) != 1:
        fail("several strategies are compared on your own run: give --run RUN")
    for s in strategies:
        parse_strategy(s)
    strat = parse_strategy(strategies[0])
    spec = _find_run(run, home.expanduser()) if run is not None else None
    device = resolve_device(gpu)
    _model_assets(checkpoint, home, vae, text_encoder_path)  # an ensemble folder holds its own
    fvd_net = clip = None
    if i3d is not None:
        from expert.i3d import I3DFeatures

        fvd_net = I3DFeatures.from_file(i3d, device=device)
    if clip_weights is not None:
        from expert.clip_score import ClipScorer

        clip = ClipScorer.from_pretrained(clip_model, clip_weights, device=device)
    if spec is not None:
        from node.cli_eval import evaluate_own_run

        evaluate_own_run(spec, ensemble=ensemble, checkpoint=checkpoint, data=data, prompts_file=prompts,
                         strategies=strategies, router_mode=router_mode, n=n, steps=steps, guidance=guidance,
                         device=device, fvd_net=fvd_net, clip=clip, json_out=json_out)
        return
    with progress() as bar:
        task = bar.add_task("training the synthetic-data judge (once)", total=None, visible=False)
        judge = cached_judge(judge_dir, on_step=lambda i, total: bar.update(task, completed=i, total=total,
                                                                             visible=True))
    from expert.conditioning import conditioning_ratio, denoised_accuracy
    from expert.synth_classifier import generator_clips

    if ensemble is not None:
        from expert.pipeline import ParisPipeline

        pipe = ParisPipeline.from_pretrained(ensemble, router_mode=router_mode).to(device)
        networks = {f"expert_{k}": e for k, e in enumerate(pipe.experts)}
        text_encoder, codec = pipe.text_encoder, pipe.codec

        def sample(prompts, seed, scale=guidance):
            return pipe(prompts, strategy=strat, num_inference_steps=steps, guidance_scale=scale, seed=seed,
                        output_type="uint8").frames
    else:
        from expert.sampling import load_expert, sample_prompts

        expert = load_expert(checkpoint, device)
        networks, text_encoder, codec = {"expert": expert.model}, expert.text, expert.codec

        def sample(prompts, seed, scale=guidance):
            return sample_prompts(expert, prompts, steps=steps, guidance=scale, seed=seed, device=device)

    with progress() as bar:
        task = bar.add_task("sampling", total=n * (2 if compare_guidance else 1))
        report = evaluate_synthetic(sample, judge, n=n, on_batch=lambda k: bar.advance(task, k), fvd_net=fvd_net,
                                    clip=clip)
        if compare_guidance:
            plain = evaluate_synthetic(lambda p, s: sample(p, s, 1.0), judge, n=n,
                                       on_batch=lambda k: bar.advance(task, k))
            report["attribute_accuracy_without_guidance"] = plain["attribute_accuracy"]
    clips, present, captions = generator_clips(EVAL_SEED, min(n, 16))
    report["conditioning_ratio"] = {name: conditioning_ratio(net, text_encoder, codec, clips, captions,
                                                             device=device)
                                    for name, net in networks.items()}
    report["denoised_accuracy"] = {name: denoised_accuracy(net, text_encoder, codec, judge, clips, present,
                                                           captions, device=device)
                                   for name, net in networks.items()}
    report.update({"what": str(ensemble or checkpoint), "strategy": str(strat) if ensemble else None,
                   "router_mode": pipe.router_mode if ensemble else None,
                   "steps": steps, "guidance": guidance, "judge_heldout_accuracy": judge.heldout_accuracy})
    if json_out:
        out.print_json(json.dumps(report))
        return
    out.print(f"FVD-synth {report['fvd_synth']:.3f} over {n} videos; prompt-attribute accuracy "
              f"{report['mean_attribute_accuracy']:.3f}; high-frequency energy {report['high_frequency_ratio']:.2f}× "
              "the real clips' (above 1: speckle, below 1: blur)", highlight=False)
    for a, v in report["attribute_accuracy"].items():
        out.print(f"  {a:10} {v:.3f} (judge on real clips: {report['attribute_accuracy_on_real_clips'][a]:.3f})",
                  highlight=False)
    if "attribute_accuracy_without_guidance" in report:
        plain = report["attribute_accuracy_without_guidance"]
        out.print("  without guidance: " + ", ".join(f"{a} {v:.3f}" for a, v in plain.items()), highlight=False)
    for name, ratios in report["conditioning_ratio"].items():
        out.print(f"text use ‖v_c − v_u‖/‖v_u‖ of {name}: "
                  + ", ".join(f"{t} {r:.4f}" for t, r in ratios.items())
                  + ("  (near 0: the caption is ignored)" if max(ratios.values()) < 0.02 else ""), highlight=False)
        means = {t: [sum(acc.values()) / len(acc) for acc in (a["with_caption"], a["without_caption"])]
                 for t, a in report["denoised_accuracy"][name].items()}
        out.print(f"one-step x̂₀ of {name}, mean attribute accuracy with / without the caption: "
                  + ", ".join(f"{t} {w:.2f} / {wo:.2f}" for t, (w, wo) in means.items()), highlight=False)
    if "fvd" in report:
        out.print(f"FVD (I3D) {report['fvd']:.2f}", highlight=False)
    if "clip_similarity" in report:
        out.print(f"CLIP similarity {report['clip_similarity']:.4f} (real clips of the same prompts: "
                  f"{report['clip_similarity_on_real_clips']:.4f})", highlight=False)


@app.command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the data, run spec, checkpoints and video.")]
    = Path("demo"),
    preset: Annotated[str, typer.Option(help="Expert preset (tiny is a quick check, small the real demo).")] = "small",
    clips: Annotated[int, typer.Option(min=8, help="Synthetic clips to generate.")] = 2000,
    clusters: Annotated[int, typer.Option(min=1, help="Clusters K.")] = 3,
    cluster: Annotated[int, typer.Option(min=0, help="Which cluster's expert to train.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = DEMO_STEPS,
    gpu: GpuOpt = "cpu",
) -> None:
    """The local demo: synthetic data → clusters → train one expert → sample a video from it.
    Re-running resumes: existing data, run spec and checkpoints in --out are reused."""
    from expert.checkpoint import LATEST

    data, run_file, ckpt = out_dir / "data", out_dir / "run.json", out_dir / f"expert_{cluster}"
    if not (data / "manifest.json").is_file():
        data_synth(out_dir=data, clips=clips, seed=0, frames=16, size="32x32", json_out=False)
    if not run_file.is_file():
        run_init(data=data, clusters=clusters, out_file=run_file, config=None, preset=preset, seed=0, name="demo",
                 target_steps=steps, vae=None, text_model=None, text_weights=None, clip_model=None, clip_weights=None,
                 dinov2=None, gpu=gpu, json_out=False)
    from protocol.run import RunSpec

    spec = RunSpec.load(run_file)
    if spec.preset.name != preset:
        fail(f"{run_file} was made with preset {spec.preset.name!r}: use --preset {spec.preset.name} or a new --out")
    done = 0
    if (ckpt / LATEST).is_file():
        from expert.checkpoint import read_meta, resolve_checkpoint

        done = read_meta(resolve_checkpoint(ckpt)).step
    if done < steps and train_local(run=run_file, cluster=cluster, steps=steps - done, out_dir=ckpt,
                                    resume=ckpt if done else None, data=None, gpu=gpu, checkpoint_every=None,
                                    tensorboard=None):
        out.print(f"stopped; run the same command again to resume from {ckpt}")
        return
    from expert.synth import MOTION_PHRASES

    majority = spec.balance.clusters[cluster].majority
    motion = MOTION_PHRASES.get(majority.get("motion", "left"), ("moving left",))[0]
    prompt = (f"a {majority.get('colour', 'red')} {majority.get('shape', 'square')} {motion} "
              f"on a {majority.get('background', 'dark')} background")
    sample_cmd(prompt=prompt, out_file=out_dir / "sample.gif", ensemble=None, checkpoint=ckpt, strategy="top1",
               steps=30, guidance=4.0, seed=0, num_videos=4, routing_out=None, offload=False, gpu=gpu)
    out.print(f"demo done: open {out_dir / 'sample.gif'} (prompt: {prompt!r})", highlight=False)


from node.cli_swarm import register as _register_swarm_commands  # noqa: E402  (join, status, fetch)

_register_swarm_commands(app)


def main() -> None:
    try:
        app()
    except ParisError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
