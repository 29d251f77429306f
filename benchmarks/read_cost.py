"""What one read of a run's records costs, the first time and again: N checkpoint records under one key on
two real hivemind nodes on loopback, read with `read_run` (every record fetched, validated and judged), then
read again with nothing new (each record version is validated once: only what changed is checked).

    python benchmarks/read_cost.py [--records 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from pathlib import Path

from hivemind.utils.timed_storage import get_dht_time

from protocol.swarm_records import CheckpointBody
from swarm.dht import NetworkConfig, SwarmNode
from swarm.state import publish_checkpoint, read_run


def _cid(i: int) -> str:
    return "bafkrei" + hashlib.sha256(str(i).encode()).hexdigest()[:52].translate(str.maketrans("0189", "abcd"))


async def measure(records: int, home: Path) -> dict:
    a = SwarmNode.start(home / "a")
    b = SwarmNode.start(home / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
    try:
        now = get_dht_time()
        lanes = asyncio.Semaphore(32)

        async def put(i: int) -> bool:
            async with lanes:
                return await publish_checkpoint(a, "bench", CheckpointBody(
                    slot="expert-0", step=i + 1, cid=_cid(i), bytes=10, ts=now, val_loss=1.0))

        stored = sum(await asyncio.gather(*(put(i) for i in range(records))))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            view = await read_run(b, "bench", 1)
            times.append(time.perf_counter() - t0)
        return {"records": records, "stored": stored, "read": len(view.checkpoints),
                "first_read_s": round(times[0], 3), "again_s": round(min(times[1:]), 3),
                "ratio": round(min(times[1:]) / times[0], 3)}
    finally:
        a.shutdown()
        b.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(measure(args.records, Path(tmp)))
    print(json.dumps(out) if args.json else
          f"{out['read']}/{out['records']} records: first read {out['first_read_s']} s, again {out['again_s']} s "
          f"(again / first = {out['ratio']})")


if __name__ == "__main__":
    main()
