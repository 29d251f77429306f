"""A hostile peer for the lease tests: several identities of its own (our own client code: SwarmNode and
ClaimManager) that claim every cluster of a run first, keep renewing their leases, and never train. Prints
one JSON line per lease it holds; exits on {"op": "quit"} on stdin (or after 15 minutes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from node.bundle import resolve_run_id
from node.nodefile import peers_from_file
from protocol.swarm_records import run_key
from swarm.claims import ClaimManager
from swarm.dht import NetworkConfig, SwarmNode
from tests.swarm.attacker import parser, serve_until_quit


async def main(args) -> None:
    net = NetworkConfig(initial_peers=tuple(peers_from_file(args.peers_file, timeout=60)))
    nodes = [await asyncio.to_thread(SwarmNode.start, Path(args.home) / f"squat-{i}", net) for i in range(args.count)]
    run_id = await resolve_run_id(nodes[0], None)
    pointers = await nodes[0].get(run_key(run_id, "spec"))
    clusters = max(r.body.num_clusters for r in pointers.records)
    managers = []
    for node in nodes:  # one lease per identity: together they hold every cluster
        manager = ClaimManager(node, run_id, clusters, period=1.0, max_delay=0.1)
        cluster = await manager.claim(wait=False, timeout=60)
        print(json.dumps({"act": "squat", "cluster": cluster, "peer": node.peer_id}), flush=True)
        managers.append(manager)
    await serve_until_quit()  # serve our content (and renew our leases) until told to quit
    for manager, node in zip(managers, nodes, strict=True):
        await manager.close()
        node.shutdown()


if __name__ == "__main__":
    asyncio.run(main(parser(count=2).parse_args()))
