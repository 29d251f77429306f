"""A real swarm node process for the claim integration tests, driven by JSON lines on stdin/stdout.

Run as `python tests/swarm/claim_node.py --home DIR [--initial-peers MADDR ...]` from the repo root.
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

from hivemind.utils.timed_storage import get_dht_time

from swarm.claims import ClaimManager
from swarm.dht import NetworkConfig, SwarmNode


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--initial-peers", nargs="*", default=[])
    ap.add_argument("--clock-skew", type=float, default=0.0, help="this node's clock runs this many s off")
    args = ap.parse_args()
    node = SwarmNode.start(args.home, NetworkConfig(initial_peers=tuple(args.initial_peers)))
    managers: dict[str, ClaimManager] = {}
    tasks: set[asyncio.Task] = set()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where a silent node is
    emit({"ready": True, "stacks": "SIGUSR1", "peer_id": node.peer_id, "maddrs": node.visible_maddrs()})

    def manager(cmd: dict) -> ClaimManager:
        run = cmd["run"]
        if run not in managers:
            managers[run] = ClaimManager(node, run, cmd["clusters"], period=cmd.get("period", 1.0),
                                         settle=cmd.get("settle", 1.0), max_delay=cmd.get("delay", 0.3),
                                         clock=lambda: get_dht_time() + args.clock_skew)
        return managers[run]

    async def background_claim(cmd: dict) -> None:
        cluster = await manager(cmd).claim(wait=True, timeout=cmd.get("timeout", 60))
        emit({"event": "claimed", "run": cmd["run"], "cluster": cluster, "t": time.time()})

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "claim":
            t0 = time.time()
            cluster = await manager(cmd).claim(wait=False, timeout=cmd.get("timeout", 30))
            emit({"op": op, "cluster": cluster, "elapsed": time.time() - t0})
        elif op == "claim_bg":
            task = asyncio.create_task(background_claim(cmd))
            tasks.add(task)
            emit({"op": op})
        elif op == "states":
            states = await manager(cmd).cluster_states()
            emit({"op": op, "states": [s.value for s in states]})
        elif op == "owned":
            owned = {run: m.cluster for run, m in managers.items()}
            problems = {run: m.clock_problem for run, m in managers.items() if m.clock_problem}
            emit({"op": op, "peer_id": node.peer_id, "owned": owned, "clock": problems})
        elif op == "release":
            await manager(cmd).release()
            emit({"op": op})
        elif op == "quit":
            break
    for m in managers.values():
        await m.release()
    node.shutdown()
    emit({"bye": True})


if __name__ == "__main__":
    asyncio.run(main())
