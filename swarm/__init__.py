"""The swarm layer of paris-node: everything that talks to other peers, and nothing that trains.

The modules:

- `dht` — `SwarmNode`: the one hivemind DHT of a process, with the node's identity and typed, signed records.
- `identity` — `load_identity`: the persistent RSA key (in the home) that is both peer id and record signer.
- `validator` — the record validator every node runs: well-formed envelopes in their owner's subkey only.
- `clock` — how far this node's clock is from the swarm's, from peers' record timestamps.
- `claim_logic` — `choose_cluster`/`winner`: which cluster to train, pure functions over a DHT snapshot.
- `claims` — `ClaimManager`: the thin I/O loop around claim_logic (read, announce, settle, renew, release).
- `acceptance` — which published checkpoints count: one pure function over checkpoint and attestation records.
- `verify_plan` — which checkpoints a verifier checks and which intervals it replays: keyed draws nobody foresees.
- `state` — `read_run`/`publish_progress`/`publish_checkpoint`/`publish_spec_pointer`: run records as one view.
- `members` — `MemberReader`: a run's members read from their buckets, a rotating few a read, each kept till expiry.
- `layout` — the bounded record layout: keys sharded by slot and epoch, quorum certificates, the bound per key.
- `archive` — records that outlive their TTL: what a seeder keeps alive, and its local ledger.
- `cas` — `ContentStore`: put files under a root CID, get them from any providers, serve and announce them.
- `cas_files` — files ↔ blobs: chunk a file or directory into the blob store, write a manifest's files out.
- `cas_transfer` — chunk transfer: the server, and the parallel, verifying, resumable multi-provider download.
- `blobstore` — the local blob store: verified chunks and manifests under their CIDs, pins, garbage collection.
- `packs` — fetched content kept as its assembled files, written once, in place.
- `dialback` — `paris-dialback/1` over hivemind P2P: every daemon answers it, `doctor` asks it.
- `gossip` — `GossipClient`: the daemon's handle on its gossip worker process (signed events, peers via DHT).
- `gossip_gate` — admission of received gossip: authenticate, drop duplicates, rate-limit, count drops.
- `gossip_worker` — py-libp2p gossipsub in a process of its own, driven over JSON lines on stdin/stdout.

Names are imported lazily: the gossip worker imports this package and must never load hivemind (it cannot
share a process with libp2p, docs/design.md §6), so nothing here imports a submodule until it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SwarmNode": "swarm.dht",
    "NetworkConfig": "swarm.dht",
    "ProtocolMismatchError": "swarm.dht",
    "Identity": "swarm.identity",
    "load_identity": "swarm.identity",
    "ClaimManager": "swarm.claims",
    "choose_cluster": "swarm.claim_logic",
    "winner": "swarm.claim_logic",
    "cluster_states": "swarm.claim_logic",
    "ContentStore": "swarm.cas",
    "FetchError": "swarm.cas_transfer",
    "GossipClient": "swarm.gossip",
    "join_gossip": "swarm.gossip",
    "read_run": "swarm.state",
    "RunView": "swarm.state",
    "publish_progress": "swarm.state",
    "publish_checkpoint": "swarm.state",
    "publish_spec_pointer": "swarm.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'swarm' has no attribute {name!r}")
