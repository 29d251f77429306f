"""Publishing a run into the swarm and fetching it back, verified.

The creator splits the data by cluster (each cluster a data set of its own, so an expert fetches only its
own clips), puts each into the content store, and puts the bundle (`run.json` + `swarm.json`) whose CID the
run's spec pointer names. A joiner fetches the bundle, checks that the spec hashes to the run id it asked
for, and fetches cluster data by the CIDs the bundle lists (the store verifies every chunk)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hivemind.utils.timed_storage import get_dht_time

from expert.shards import ClipBatch, ShardWriter, load_dataset, open_dataset, shards_holding
from node.assets import fetch_assets, spec_assets
from protocol.atomic import atomic_write_bytes
from protocol.canonical import canonical_json
from protocol.data import MANIFEST_NAME, DataManifest
from protocol.errors import IntegrityError, ParisError
from protocol.run import RunSpec
from protocol.swarm_records import ROUTER, RUN_ID_PATTERN, RunPointerBody, run_key
from protocol.swarm_run import SIGNATURE_FILE, SPEC_FILE, SWARM_FILE, ClusterData, Schedule, SwarmRunManifest
from swarm.cas import ContentStore
from swarm.dht import DHTReadError, RecordSet, SwarmNode
from swarm.identity import peer_id_of_public_key, sign, verify_signature
from swarm.state import RunRules, list_runs, publish_spec_pointer

log = logging.getLogger(__name__)


MAX_BUNDLE_BYTES = 256 << 20  # run.json (assignments, centroids) + swarm.json + signature


def checkpoint_limit(run: LocalRun, slot: str) -> int:
    """The most bytes a checkpoint of `slot` of this run can hold (from its preset, not from any record)."""
    from expert.router_preset import run_router_preset
    from expert.sizes import checkpoint_bytes_bound

    spec = run.spec
    preset = run_router_preset(spec) if slot == ROUTER else spec.preset
    return checkpoint_bytes_bound(preset)


@dataclass(frozen=True)
class LocalRun:
    spec: RunSpec
    manifest: SwarmRunManifest
    bundle_cid: str

    @property
    def rules(self) -> RunRules:
        """What makes a checkpoint and a lease of this run count (its schedule and trainer allowlist)."""
        return RunRules.of(self.spec, self.manifest.schedule, self.manifest.trainers)


def latent_cache(work: Path) -> Path:
    """Where a latent run's clips, encoded once, are kept beside the run's other files (`run init` writes them
    there; publishing reuses them)."""
    return Path(work) / "latents"


def ensure_latents(spec: RunSpec, data_dir: Path, work: Path, **progress) -> Path:
    """The run's data encoded (latents and/or stored text states: expert.latent_data): the cache if it holds
    this data encoded by this run's VAE and text encoder, else encoded now (the assets must be on this machine)."""
    from expert.latent_data import encode_dataset, matches

    cache = latent_cache(work)
    with contextlib.suppress(IntegrityError, OSError):
        if matches(DataManifest.load(cache), spec.preset, spec.data.data_id):
            return cache
    source = DataManifest.load(data_dir)
    if source.data_id != spec.data.data_id:
        raise IntegrityError(f"data in {data_dir} is not the data of run {spec.run_id}")
    encode_dataset(data_dir, spec.preset, cache, **progress)
    return cache


def split_by_cluster(spec: RunSpec, data_dir: Path, out: Path, work: Path | None = None) -> list[tuple[Path, Path]]:
    """Write two data sets per cluster: `out/cluster-k` (its training clips, in run order) and
    `out/holdout-k` (its held-out clips, the validation split that verifiers fetch alone). A latent run's
    clusters hold latents (encoded once, kept in `work`'s latent cache), not frames."""
    from expert.latent_data import needs_encoding

    if needs_encoding(spec.preset):
        manifest, clips = load_dataset(ensure_latents(spec, data_dir, work or out.parent))
    else:
        manifest, clips = load_dataset(data_dir)
        if manifest.data_id != spec.data.data_id:
            raise IntegrityError(f"data in {data_dir} is not the data of run {spec.run_id}")
    dirs = []
    for k in range(spec.num_clusters):
        dirs.append((_write_subset(clips.select(spec.train_clips(k)), manifest, out / f"cluster-{k}"),
                     _write_subset(clips.select(spec.holdout_clips(k)), manifest, out / f"holdout-{k}")))
    return dirs


def _write_subset(clips: ClipBatch, like: DataManifest, out: Path, per_shard: int = 256) -> Path:
    writer = ShardWriter(out, clips_per_shard=per_shard)
    for start in range(0, len(clips), per_shard):
        writer.write(clips.select(range(start, min(start + per_shard, len(clips)))))
    writer.finish(source=like.source, frames=like.frames, height=like.height, width=like.width, fps=like.fps,
                  attributes=like.attributes, generator=like.generator, latents=like.latents,
                  text=like.text)
    return out


def bundle_digest(spec_bytes: bytes, swarm_bytes: bytes) -> bytes:
    """What the creator signs: both bundle files, length-prefixed so that no byte can move between them."""
    return b"paris-bundle/1\n" + len(spec_bytes).to_bytes(8, "big") + spec_bytes + swarm_bytes


def write_bundle(bundle: Path, spec: RunSpec, manifest: SwarmRunManifest, identity) -> None:
    """Write `run.json`, `swarm.json` and the creator's signature of both into a fresh folder `bundle`."""
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    spec_bytes, swarm_bytes = canonical_json(spec.model_copy(update={"data_hint": None})), canonical_json(manifest)
    atomic_write_bytes(bundle / SPEC_FILE, spec_bytes)
    atomic_write_bytes(bundle / SWARM_FILE, swarm_bytes)
    atomic_write_bytes(bundle / SIGNATURE_FILE, sign(identity, bundle_digest(spec_bytes, swarm_bytes)))


async def publish_run(node: SwarmNode, store: ContentStore, spec: RunSpec, data_dir: Path, work: Path,
                      schedule: Schedule | None = None, trainers: tuple[str, ...] | None = None) -> LocalRun:
    """Put the run's cluster data and bundle into `store` (pinned, provided), sign the bundle with our key (we
    must be the spec's creator) and announce it in the DHT."""
    if spec.creator is None or spec.creator.encode() != node.identity.public_key_bytes:
        raise ParisError(f"run {spec.run_id} belongs to another creator: only the identity that created it "
                         "(whose key its run id commits to) can publish it")
    work = Path(work)
    await fetch_assets(store, spec_assets(spec))  # ours (imported by `run init`): checked, and located
    cluster_dirs = await asyncio.to_thread(split_by_cluster, spec, data_dir, work / "clusters", work)
    clusters = []
    for k, (train, held) in enumerate(cluster_dirs):
        cid, held_cid = await store.put(train), await store.put(held)
        clusters.append(ClusterData(cluster=k, cid=cid, clips=len(spec.train_clips(k)),
                                    bytes=sum(f.stat().st_size for f in train.iterdir()), holdout_cid=held_cid,
                                    holdout_clips=len(spec.holdout_clips(k)),
                                    holdout_bytes=sum(f.stat().st_size for f in held.iterdir())))
    manifest = SwarmRunManifest(run_id=spec.run_id, clusters=tuple(clusters), schedule=schedule or Schedule(),
                                created_by=node.peer_id, created_at=get_dht_time(), trainers=trainers)
    bundle = work / "bundle"
    write_bundle(bundle, spec, manifest, node.identity)
    cid = await store.put(bundle)
    if not await publish_spec_pointer(node, spec.run_id, cid, spec.num_clusters):
        log.warning("the run's spec pointer was not stored by any peer yet; it is re-announced periodically")
    return LocalRun(spec, manifest, cid)


async def resolve_run_id(node: SwarmNode, run: str | None) -> str:
    """The run to join: `run` if given, else the only (or newest) run announced in the swarm."""
    if run:
        if not re.fullmatch(RUN_ID_PATTERN, run):
            raise ParisError(f"--run {run!r} is neither a run id nor a run spec file (to publish a new run, give "
                             "the .json file that `paris-node run init` wrote)")
        return run
    runs = await list_runs(node)
    if not runs:
        raise ParisError("no run is announced in this swarm yet (is the bootstrap node up? pass --run RUN_ID)")
    if len(runs) > 1:
        log.info("several runs in this swarm (%s); joining the newest, %s", ", ".join(r.run_id for r in runs),
                 runs[0].run_id)
    return runs[0].run_id


async def fetch_run(node: SwarmNode, store: ContentStore, run_id: str, *, timeout: float = 120.0) -> LocalRun:
    """Fetch and verify run `run_id`'s bundle from the swarm (retrying while its pointer is not yet visible).
    Only the creator's pointer counts: the run id commits to the creator's key, the pointer record must be
    signed by that key and the bundle carry its signature. Pointers of other keys are ignored and logged,
    however new their timestamps."""
    deadline = asyncio.get_running_loop().time() + timeout
    creator: bytes | None = None
    errors: list[str] = []
    tried: set[tuple[bytes, str | None]] = set()  # (owner, CID) tried; (owner, None): already logged
    while True:
        try:
            found = await node.get(run_key(run_id, "spec"))
        except DHTReadError as e:  # retried until the deadline, like a pointer that is not visible yet
            errors.append(str(e))
            found = RecordSet(())
        pointers = sorted(((r.owner, r.body) for r in found.records if isinstance(r.body, RunPointerBody)
                           and r.body.run_id == run_id), key=lambda ob: ob[1].ts, reverse=True)
        for owner, pointer in pointers:
            if (owner, pointer.spec_cid) in tried:
                continue
            tried.add((owner, pointer.spec_cid))
            if creator is not None and owner != creator:
                log.warning("ignoring a pointer to run %s from %s: only its creator's pointer counts", run_id,
                            peer_id_of_public_key(owner))
                continue
            try:
                path = await store.get(pointer.spec_cid, max_bytes=MAX_BUNDLE_BYTES)
                local = _verify_bundle(path, run_id, pointer.spec_cid, owner)
            except ForeignBundleError as e:
                creator = e.creator
                log.warning("ignoring a pointer to run %s: %s", run_id, e)
                errors.append(str(e))
            except (IntegrityError, ParisError) as e:
                errors.append(str(e))
            else:
                for other, _ in pointers:  # say so even when the creator's pointer came first
                    if other != owner and (other, None) not in tried:
                        tried.add((other, None))
                        log.warning("ignoring a pointer to run %s from %s: only its creator's pointer counts",
                                    run_id, peer_id_of_public_key(other))
                return local
        if asyncio.get_running_loop().time() > deadline:
            if errors:
                raise ParisError(f"no valid bundle for run {run_id}: {'; '.join(errors[-3:])}")
            raise ParisError(f"run {run_id} is not announced in this swarm (check the run id and the peers)")
        await asyncio.sleep(2.0)


class ForeignBundleError(IntegrityError):
    """A bundle of the right run announced or signed by a key other than its creator's."""

    def __init__(self, message: str, creator: bytes) -> None:
        super().__init__(message)
        self.creator = creator


def _verify_bundle(path: Path, run_id: str, cid: str, announcer: bytes | None = None) -> LocalRun:
    """Check a fetched bundle: its spec hashes to `run_id` (so its creator is the run's), the pointer came from
    that creator (`announcer`, when known), and the creator signed both files."""
    spec_bytes = (path / SPEC_FILE).read_bytes() if (path / SPEC_FILE).is_file() else b""
    spec = RunSpec.load(path / SPEC_FILE)
    if spec.run_id != run_id:
        raise IntegrityError(f"bundle {cid} holds run {spec.run_id}, not {run_id}")
    if spec.creator is None:
        raise IntegrityError(f"bundle {cid}: run {run_id} names no creator")
    creator = spec.creator.encode()
    if announcer is not None and announcer != creator:
        raise ForeignBundleError(f"pointer from {peer_id_of_public_key(announcer)}, not from the run's creator "
                                 f"{peer_id_of_public_key(creator)}", creator)
    swarm_bytes = (path / SWARM_FILE).read_bytes() if (path / SWARM_FILE).is_file() else b""
    signature = (path / SIGNATURE_FILE).read_bytes() if (path / SIGNATURE_FILE).is_file() else b""
    if not verify_signature(creator, bundle_digest(spec_bytes, swarm_bytes), signature):
        raise ForeignBundleError(f"bundle {cid} is not signed by the run's creator", creator)
    manifest = SwarmRunManifest.load(path / SWARM_FILE)
    if manifest.run_id != run_id or len(manifest.clusters) != spec.num_clusters:
        raise IntegrityError(f"bundle {cid}: its swarm manifest does not match run {run_id}")
    if any(c.clips != len(spec.train_clips(c.cluster)) or c.holdout_clips != len(spec.holdout_clips(c.cluster))
           for c in manifest.clusters):
        raise IntegrityError(f"bundle {cid}: cluster sizes disagree with the run's assignments and split")
    return LocalRun(spec, manifest, cid)


async def fetch_cluster_clips(store: ContentStore, run: LocalRun, cluster: int, *,
                              holdout: bool = False) -> ClipBatch:
    """Fetch, verify and load one cluster's training clips (or, with `holdout`, its held-out clips)."""
    entry = run.manifest.clusters[cluster]
    cid, expected = (entry.holdout_cid, entry.holdout_clips) if holdout else (entry.cid, entry.clips)
    size = entry.holdout_bytes if holdout else entry.bytes
    path = await store.get(cid, expected_bytes=size)  # the signed bundle says how large it is
    _, clips = await asyncio.to_thread(open_dataset, path)  # frames / latents stay on disk until a batch reads them
    if len(clips) != expected:
        raise IntegrityError(f"cluster {cluster} data ({cid}) holds {len(clips)} clips, expected {expected}")
    return clips


async def fetch_cluster_sample(store: ContentStore, run: LocalRun, cluster: int, indices) -> ClipBatch:
    """Clips `indices` (positions among the cluster's training clips) of one cluster, fetching only its
    manifest and the shards that hold them (parts of the cluster's CID: swarm.cas ContentStore.get(files=))."""
    entry = run.manifest.clusters[cluster]
    head = await store.get(entry.cid, expected_bytes=entry.bytes, files=(MANIFEST_NAME,), pin=False, provide=False)
    manifest = await asyncio.to_thread(DataManifest.load, head)
    if manifest.total_clips != entry.clips:
        raise IntegrityError(f"cluster {cluster} data ({entry.cid}) holds {manifest.total_clips} clips, expected "
                             f"{entry.clips}")
    files = (MANIFEST_NAME, *(manifest.shards[i].file for i in shards_holding(manifest, indices)))
    path = await store.get(entry.cid, expected_bytes=entry.bytes, files=files)
    _, clips = await asyncio.to_thread(open_dataset, path, indices)
    return clips
