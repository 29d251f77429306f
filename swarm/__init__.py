"""The swarm layer of paris-node: everything that talks to other peers, and nothing that trains.

- `SwarmNode` (swarm.dht): the hivemind DHT with the node's persistent identity (`load_identity`, home dir)
  and signed, schema-validated records (`protocol.swarm_records`).
- `ClaimManager` (swarm.claims) around the pure `choose_cluster`/`winner` (swarm.claim_logic): cluster leases.
- `ContentStore` (swarm.cas): CIDs for files and directories, verified multi-provider downloads over hivemind
  streams, pins and garbage collection.
- `GossipClient` (swarm.gossip): gossipsub events through a separate worker process (swarm.gossip_worker).
- `read_run`/`publish_progress`/`publish_checkpoint`/`publish_spec_pointer` (swarm.state): run records.

Names are imported lazily: the gossip worker imports this package and must never load hivemind (it cannot
share a process with libp2p), so nothing here imports a submodule until it is asked for.
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
