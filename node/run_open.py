"""Which run a daemon works on, made ready: fetch and verify the run it joins (by id, or the one its peers
announce), or publish the run it starts (`--run FILE`, or the built-in demo run, generated once and reused),
then fetch the model assets every trainer and verifier needs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from node.assets import fetch_assets, spec_assets
from node.bundle import LocalRun, fetch_run, publish_run, resolve_run_id
from node.logs import event
from node.options import DaemonOptions, DemoOptions
from protocol.errors import ParisError
from protocol.run import RunSpec
from swarm.cas import ContentStore
from swarm.dht import SwarmNode

log = logging.getLogger("node.daemon")


async def open_run(node: SwarmNode, store: ContentStore, opts: DaemonOptions, home: Path) -> LocalRun:
    if not opts.creates_run:
        run_id = await resolve_run_id(node, opts.run)
        event(log, "fetching the run", run=run_id)
        local = await fetch_run(node, store, run_id)
    else:
        me = node.identity.public_key_bytes.decode()
        if opts.run:
            spec, data_dir = run_file_spec(Path(opts.run), opts.data, me)
        else:
            spec, data_dir = await asyncio.to_thread(demo_spec, opts.demo, home, me)
        event(log, "publishing the run into the content store", run=spec.run_id, clusters=spec.num_clusters)
        schedule = opts.schedule
        if opts.checkpoint_every_from_preset:
            schedule = schedule.with_preset_cadence(spec.preset.train)
        local = await publish_run(node, store, spec, data_dir, home / "runs" / spec.run_id, schedule, opts.trainers)
    spec = local.spec
    if assets := spec_assets(spec, sampling=False):  # the text weights: every trainer and verifier needs them
        event(log, "fetching the run's model assets", assets=", ".join(a.name for a in assets.values()))
        await fetch_assets(store, assets)
    event(log, "run ready", run=spec.run_id, clusters=spec.num_clusters, preset=spec.preset.name,
          target_steps=spec.preset.train.target_steps, bundle=local.bundle_cid)
    return local


def run_file_spec(path: Path, data: Path | None, me: str) -> tuple[RunSpec, Path]:
    """`--run FILE` starting a swarm: the spec and where its data is, owned by this node's identity (`me`)."""
    if not path.is_file():
        raise ParisError(f"--run {path}: no such run spec file (a new swarm needs one from `run init`)")
    spec = RunSpec.load(path)
    data = data or (Path(spec.data_hint) if spec.data_hint else None)
    if data is None:
        raise ParisError(f"{path} does not say where its data is: pass --data DIR")
    if spec.creator is None:  # a spec made without an identity: this node becomes its creator
        spec = spec.model_copy(update={"creator": me})
        event(log, "the run spec names no creator: publishing it as this node's run", run=spec.run_id)
    elif spec.creator != me:
        raise ParisError(f"{path} belongs to another creator (its run id commits to their key): only that "
                         f"identity can publish it; join it with --run {spec.run_id} instead")
    return spec, data


def demo_spec(d: DemoOptions, home: Path, me: str) -> tuple[RunSpec, Path]:
    """The built-in demo run (synthetic data generated and clustered once, reused on restart)."""
    from protocol.run import RUN_FORMAT_VERSION

    root = home / "demo" / f"v{RUN_FORMAT_VERSION}-{d.preset}-k{d.clusters}-n{d.clips}-t{d.target_steps}"
    data, run_file = root / "data", root / "run.json"
    if not (data / "manifest.json").is_file():
        from expert.synth_dataset import write_synthetic

        event(log, "generating the built-in synthetic data", clips=d.clips, out=str(data))
        write_synthetic(data, clips=d.clips, seed=0)
    if not run_file.is_file():
        from expert.run_init import init_run

        event(log, "clustering the demo data", clusters=d.clusters)
        spec = init_run(data, d.clusters, preset_name=d.preset, seed=0, name="demo", target_steps=d.target_steps,
                        creator=me)
        spec.save(run_file)
    return RunSpec.load(run_file), data
