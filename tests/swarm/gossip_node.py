"""A real node process for the gossip integration tests (hivemind DHT + gossip worker), driven by JSON lines.

Run as `python tests/swarm/gossip_node.py --home DIR --run RUN [--initial-peers MADDR ...]` from the repo root.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.swarm_gossip import GossipSettings, ProgressEvent
from swarm.dht import NetworkConfig, SwarmNode
from swarm.gossip import GossipClient, join_gossip


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--initial-peers", nargs="*", default=[])
    ap.add_argument("--settings", default="{}", help="GossipSettings as JSON")
    args = ap.parse_args()
    node = SwarmNode.start(args.home, NetworkConfig(initial_peers=tuple(args.initial_peers)))

    def on_message(msg) -> None:
        emit({"event": "msg", "sender": msg.sender, "step": msg.event.step, "cluster": msg.event.cluster,
              "t_recv": time.time()})

    settings = GossipSettings.model_validate_json(args.settings)
    client = GossipClient(node.identity, args.run, on_message=on_message, settings=settings)
    await client.start()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where a silent node is
    emit({"ready": True, "stacks": "SIGUSR1", "peer_id": node.peer_id, "maddrs": node.visible_maddrs(),
          "gossip": client.maddrs})
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "join":  # meet every member, retrying until `expect` gossip peers are connected
            deadline = time.monotonic() + cmd.get("timeout", 30)
            peers = 0
            while time.monotonic() < deadline:
                await join_gossip(node, client)
                peers = (await client.stats()).peers
                if peers >= cmd["expect"]:
                    break
                await asyncio.sleep(0.5)
            emit({"op": op, "peers": peers})
        elif op == "publish":
            t = time.time()
            await client.publish(ProgressEvent(run_id=args.run, cluster=cmd.get("cluster", 0), step=cmd["step"],
                                               target=1000))
            emit({"op": op, "t_send": t})
        elif op == "burst":  # a bounded stream: `count` events at `rate` per second
            sent = []
            for i in range(cmd["count"]):
                sent.append(time.time())
                await client.publish(ProgressEvent(run_id=args.run, cluster=1, step=cmd["start"] + i, target=10**6))
                await asyncio.sleep(1 / cmd["rate"])
            emit({"op": op, "t_send": sent})
        elif op == "stats":
            s = await client.stats()
            emit({"op": op, "peers": s.peers, "delivered": s.delivered, "dropped": s.dropped})
        elif op == "quit":
            break
    await client.close()
    node.shutdown()
    emit({"bye": True})


if __name__ == "__main__":
    asyncio.run(main())
