"""A hostile peer for the trust tests: a real process that runs our own client code (SwarmNode, ContentStore,
ClaimManager, the trainer) under identities of its own, and does each wrong thing the verification is meant
to stop. It prints one JSON line per act ({"act": ..., "cid": ..., ...}) and serves its content until it is
sent {"op": "quit"} on stdin (or 15 minutes pass).

Acts, in order:
  hijack    the run re-announced (newer timestamp) with its own cluster data, signed with its own key
  random0   a random-weight checkpoint of expert 0 (valid format, correct hashes) at step 10^6, claiming a
            low validation loss
  amplify   a checkpoint of expert 1 whose manifest repeats one chunk to claim ~150 GiB
  done1     DONE for cluster 1, which it never trained
  lease     claims a cluster legitimately, trains it honestly for one interval and publishes that checkpoint
  noise     then publishes a child of it whose weights were replaced by noise (claiming the honest loss)
  optim     and a child trained honestly whose optimizer moments are 1e30 (weights and loss honest)
  rng       and a child trained honestly whose RNG state is not a generator state; releases the lease
  reannounce  an honest peer's checkpoint re-announced under its own identity at step 10^6
  sybil     a second identity attests every one of those as accepted, with the claimed losses
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch
from hivemind.utils.timed_storage import get_dht_time

from expert.train_expert import ExpertTrainer
from node.bundle import fetch_cluster_clips, fetch_run, resolve_run_id, write_bundle
from node.nodefile import peers_from_file
from protocol.swarm_cas import CasManifest, ChunkRef, FileEntry, chunk_cid
from protocol.swarm_records import AttestationBody, CheckpointBody, DoneBody, run_key
from swarm.cas import ContentStore
from swarm.claims import ClaimManager
from swarm.dht import NetworkConfig, SwarmNode
from swarm.state import publish_attestation, publish_checkpoint, publish_spec_pointer, read_run
from tests.swarm.attacker import parser, serve_until_quit

HUGE = 10**6


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


async def publish(node: SwarmNode, store: ContentStore, run_id: str, slot: str, path: Path, *, step: int,
                  parent: str | None, val_loss: float) -> CheckpointBody:
    cid = await store.put(path)
    size = sum(f.stat().st_size for f in Path(path).iterdir())  # the true size: the lie is elsewhere
    body = CheckpointBody(slot=slot, step=step, cid=cid, bytes=size, parent=parent, val_loss=val_loss,
                          ts=get_dht_time())
    assert await publish_checkpoint(node, run_id, body)
    return body


def _huge_moments(groups: dict) -> None:
    for name, t in groups["optimizer"].items():
        if name.endswith("exp_avg"):
            t.mul_(0).add_(1e30)


def _bad_rng(groups: dict) -> None:
    groups["rng"]["generator"] = torch.zeros(7, dtype=torch.uint8)


async def main(args) -> None:
    peers = peers_from_file(args.peers_file, timeout=60)
    net = NetworkConfig(initial_peers=tuple(peers))
    node = await asyncio.to_thread(SwarmNode.start, Path(args.home) / "evil", net)
    sybil = await asyncio.to_thread(SwarmNode.start, Path(args.home) / "sybil", net)
    store = ContentStore(node, Path(args.home) / "evil" / "store")
    await store.start()
    run_id = await resolve_run_id(node, None)
    run = await fetch_run(node, store, run_id)
    spec = run.spec
    say(act="ready", peer_id=node.peer_id, sybil=sybil.peer_id, run_id=run_id, bundle=run.bundle_cid)
    work = Path(tempfile.mkdtemp(prefix="evil-", dir=args.home))

    # the run re-announced with a newer timestamp and its own cluster data, signed with its own key
    theirs = run.manifest.model_copy(update={"clusters": tuple(
        c.model_copy(update={"cid": c.holdout_cid}) for c in run.manifest.clusters), "created_by": node.peer_id})
    write_bundle(work / "bundle", spec, theirs, node.identity)
    hijack = await store.put(work / "bundle")
    assert await publish_spec_pointer(node, run_id, hijack, spec.num_clusters)
    say(act="hijack", cid=hijack)
    lies: list[CheckpointBody] = []

    # random weights for expert 0 at a huge step, claiming a low loss
    held0 = await fetch_cluster_clips(store, run, 0, holdout=True)
    rand = ExpertTrainer(spec.preset, held0, seed=4242, run_id=spec.run_id, cluster=0, holdout=held0,
                         validation=spec.validation)
    rand.step = HUGE
    rand.save(work / "random0")
    lies.append(await publish(node, store, run_id, "expert-0", work / "random0", step=HUGE, parent=None,
                              val_loss=0.01))
    say(act="random0", cid=lies[-1].cid)

    # a checkpoint whose manifest repeats one 4 MiB chunk to claim ~150 GiB (valid CIDs throughout)
    block = bytes(4 << 20)
    chunk = chunk_cid(block)
    store.blobs.write(chunk, block)
    n = 38_000
    fat = CasManifest(kind="dir", name="step-00000010", chunk_size=len(block), total_bytes=n * len(block),
                      entries=(FileEntry(path="ema.safetensors", size=n * len(block),
                                         chunks=tuple(ChunkRef(cid=chunk, size=len(block)) for _ in range(n))),))
    store.blobs.write(fat.cid, fat.to_bytes())
    store.pin(fat.cid)
    await store.provide(fat.cid, fat.total_bytes)
    lies.append(CheckpointBody(slot="expert-1", step=10, cid=fat.cid, bytes=fat.total_bytes, parent=None,
                               val_loss=0.5, ts=get_dht_time()))
    assert await publish_checkpoint(node, run_id, lies[-1])
    say(act="amplify", cid=fat.cid, bytes=fat.total_bytes)

    # DONE for a cluster it never trained
    now = get_dht_time()
    assert await node.put(run_key(run_id, "done"), DoneBody(cluster=1, step=HUGE, checkpoint_cid=lies[0].cid, ts=now),
                          now + 3600)
    say(act="done1")

    # a lease held legitimately: one honest interval, then a child whose weights are noise. Training runs in a
    # thread, as the daemon's does: on the event loop it held up the lease's renewals, and on a loaded machine the
    # lease (three 1-s periods) lapsed mid-interval and an honest node claimed the cluster afresh
    manager = ClaimManager(node, run_id, spec.num_clusters, period=1.0)
    cluster = await manager.claim(wait=True, timeout=120)
    if cluster is not None:
        clips = await fetch_cluster_clips(store, run, cluster)
        held = await fetch_cluster_clips(store, run, cluster, holdout=True)
        trainer = ExpertTrainer(spec.preset, clips, seed=spec.seed, run_id=spec.run_id, cluster=cluster,
                                holdout=held, validation=spec.validation)
        await asyncio.to_thread(trainer.train, args.interval)
        meta = await asyncio.to_thread(trainer.save, work / "honest")
        honest = await publish(node, store, run_id, f"expert-{cluster}", work / "honest", step=trainer.step,
                               parent=None, val_loss=meta.val_loss)
        say(act="lease", cluster=cluster, cid=honest.cid, step=honest.step)
        with torch.no_grad():
            for p in [*trainer.model.parameters(), *trainer.ema.parameters()]:
                p.copy_(torch.randn_like(p))
        trainer.step += args.interval
        await asyncio.to_thread(trainer.save, work / "noise")
        lies.append(await publish(node, store, run_id, f"expert-{cluster}", work / "noise", step=trainer.step,
                                  parent=honest.cid, val_loss=meta.val_loss * 0.9))
        say(act="noise", cluster=cluster, cid=lies[-1].cid, step=trainer.step)
        # two more children of the honest interval, each trained honestly and then given a training state that
        # no training leaves: optimizer moments of 1e30 (they would freeze whoever resumes from it), and an RNG
        # state that is not one. The weights, loss and counters are honest: only loading the state catches them
        for act, spoil in (("optim", _huge_moments), ("rng", _bad_rng)):
            await asyncio.to_thread(trainer.load, work / "honest")
            await asyncio.to_thread(trainer.train, args.interval)
            snap = trainer.snapshot()
            spoil(snap.groups)
            meta = await asyncio.to_thread(trainer.write_snapshot, work / act, snap)
            lies.append(await publish(node, store, run_id, f"expert-{cluster}", work / act, step=trainer.step,
                                      parent=honest.cid, val_loss=meta.val_loss))
            say(act=act, cluster=cluster, cid=lies[-1].cid, step=trainer.step)
        await manager.release()

    # an honest peer's checkpoint re-announced at a huge step
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        view = await read_run(node, run_id, spec.num_clusters)
        theirs = [c for peer, c in view.checkpoints
                  if peer not in (node.peer_id, sybil.peer_id) and not c.replica and c.slot.startswith("expert-")]
        if theirs:
            c = min(theirs, key=lambda c: c.step)
            lies.append(c.model_copy(update={"step": HUGE, "ts": get_dht_time()}))
            assert await publish_checkpoint(node, run_id, lies[-1])
            say(act="reannounce", cid=c.cid, slot=c.slot)
            break
        await asyncio.sleep(2)

    # false attestations of its own lies from a second identity
    for body in lies:
        att = AttestationBody(slot=body.slot, cid=body.cid, step=body.step, parent=body.parent,
                              val_loss=body.val_loss, verdict="accept", ts=get_dht_time())
        assert await publish_attestation(sybil, run_id, att)
    say(act="sybil", count=len(lies))

    await serve_until_quit()  # serve our content (and renew our leases) until told to quit
    await store.close()
    sybil.shutdown()
    node.shutdown()


if __name__ == "__main__":
    asyncio.run(main(parser(interval=10).parse_args()))
