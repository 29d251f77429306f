"""What one read of a run's records costs, the first time and again: N checkpoint records under one key on
two real hivemind nodes on loopback, read with `read_run` (every record fetched, validated and judged), then
read again with nothing new (each record version is validated once: only what changed is checked).

Then the CPU of a node that reads a small run over and over, as a daemon does every period: K = 2 with a few
records per key, `read_run` repeated, CPU seconds per read of every process (this one, both DHT processes
and their p2pd), with the reads a node starts together sent to its DHT process as one call (swarm.dht
`_ReadBatcher`) against one call per key, interleaved in one run.

    python benchmarks/read_cost.py [--records 1000] [--rereads 60] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


async def measure(records: int, home: Path, rereads: int = 0) -> dict:
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
        out = {"records": records, "stored": stored, "read": len(view.checkpoints),
               "first_read_s": round(times[0], 3), "again_s": round(min(times[1:]), 3),
               "ratio": round(min(times[1:]) / times[0], 3)}
        if rereads:
            out.update(await _reread_cpu(a, b, rereads))
        return out
    finally:
        a.shutdown()
        b.shutdown()


def _cpu_seconds() -> float:
    """CPU seconds so far of this process and every process below it (DHT processes, p2pd)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


async def _reread_cpu(a: SwarmNode, b: SwarmNode, rereads: int) -> dict:
    """CPU seconds per `read_run` of a small K = 2 run, with the reads sent together and one call per key."""
    now = get_dht_time()
    for slot in ("expert-0", "expert-1", "router"):
        for i in range(3):
            await publish_checkpoint(a, "small", CheckpointBody(slot=slot, step=10 * (i + 1), cid=_cid(hash(slot) + i),
                                                              bytes=10, ts=now, val_loss=1.0))
    cpu = {True: 0.0, False: 0.0}
    for i in range(2 * rereads):  # interleaved, so that the machine's noise falls on both alike
        together = i % 2 == 0
        b._reads.together = together
        c0 = _cpu_seconds()
        await read_run(b, "small", 2)
        cpu[together] += _cpu_seconds() - c0
    b._reads.together = True
    return {"reread_cpu_s_together": round(cpu[True] / rereads, 4),
            "reread_cpu_s_per_key": round(cpu[False] / rereads, 4),
            "reread_cpu_ratio": round(cpu[True] / cpu[False], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--rereads", type=int, default=60, help="reads of a small run per mode for the CPU comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(measure(args.records, Path(tmp), args.rereads))
    print(json.dumps(out) if args.json else
          f"{out['read']}/{out['records']} records: first read {out['first_read_s']} s, again {out['again_s']} s "
          f"(again / first = {out['ratio']})"
          + (f"; a small run re-read: {out['reread_cpu_s_together']} CPU s per read with its reads sent together, "
             f"{out['reread_cpu_s_per_key']} with one DHT call per key ({out['reread_cpu_ratio']})"
             if "reread_cpu_ratio" in out else ""))


if __name__ == "__main__":
    main()
