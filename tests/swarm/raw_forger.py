"""A hostile trainer that forges only what a replay sees (issue 29): it holds a lease legitimately, trains
one interval honestly and publishes it, then trains a second interval and publishes it with the raw `model`
weights put back to the parent's, so the weights that training continues from never saw the interval, while
the EMA (what is validated and sampled), the optimizer, the RNG, the counters and the loss are honest. The
content check passes; only a replay of the interval catches it. Then it releases the lease and serves its
content until sent {"op": "quit"} on stdin.

Acts: ready, lease (the honest interval: cluster, cid, step), rawmodel (the forged child: cid, step).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from expert.train_expert import ExpertTrainer
from node.bundle import fetch_cluster_clips, fetch_run, resolve_run_id
from node.nodefile import peers_from_file
from swarm.cas import ContentStore
from swarm.claims import ClaimManager
from swarm.dht import NetworkConfig, SwarmNode
from tests.swarm.attacker import parser, serve_until_quit
from tests.swarm.evil_trainer import publish


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


async def main(args) -> None:
    node = await asyncio.to_thread(SwarmNode.start, Path(args.home) / "forger",
                                   NetworkConfig(initial_peers=tuple(peers_from_file(args.peers_file, timeout=60))))
    store = ContentStore(node, Path(args.home) / "forger" / "store")
    await store.start()
    run_id = await resolve_run_id(node, None)
    run = await fetch_run(node, store, run_id)
    spec = run.spec
    say(act="ready", peer_id=node.peer_id, run_id=run_id)
    work = Path(tempfile.mkdtemp(prefix="forger-", dir=args.home))

    manager = ClaimManager(node, run_id, spec.num_clusters, period=1.0)
    cluster = await manager.claim(wait=True, timeout=120)
    assert cluster is not None, "no cluster to claim"
    slot = f"expert-{cluster}"
    clips = await fetch_cluster_clips(store, run, cluster)
    held = await fetch_cluster_clips(store, run, cluster, holdout=True)
    trainer = ExpertTrainer(spec.preset, clips, seed=spec.seed, run_id=spec.run_id, cluster=cluster, holdout=held,
                            validation=spec.validation)
    trainer.train(args.interval)
    meta = trainer.save(work / "honest")
    honest = await publish(node, store, run_id, slot, work / "honest", step=trainer.step, parent=None,
                           val_loss=meta.val_loss)
    say(act="lease", cluster=cluster, cid=honest.cid, step=honest.step)
    raw_before = trainer.snapshot().groups["model"]
    trainer.train(args.interval)
    snap = trainer.snapshot()
    snap.groups["model"] = raw_before  # the one lie: the raw weights are the parent's
    meta = trainer.write_snapshot(work / "rawmodel", snap)
    forged = await publish(node, store, run_id, slot, work / "rawmodel", step=trainer.step, parent=honest.cid,
                           val_loss=meta.val_loss)
    say(act="rawmodel", cluster=cluster, cid=forged.cid, step=forged.step)
    await manager.release()

    await serve_until_quit()
    await store.close()
    node.shutdown()


if __name__ == "__main__":
    asyncio.run(main(parser(interval=10).parse_args()))
