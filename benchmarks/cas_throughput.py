"""Content-store throughput on loopback: fetch a 256 MiB file by CID (chunked, every chunk verified, written
in place into the store's copy of the file) and compare it, in the same run, with the same bytes sent over a raw
hivemind binary stream between the same two daemons, and over raw asyncio TCP. Target: CAS/raw-hivemind ≥ 0.7.

    python benchmarks/cas_throughput.py [--mib 256] [--repeat 5] [--json]

Two processes (this one fetches; a child started with --serve holds the data). 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RAW_PROTOCOL = "paris-bench-raw/1"
BLOCK = 1 << 20


async def serve(workdir: Path, mib: int) -> None:
    from hivemind.p2p import P2P  # noqa: F401  (import order: hivemind before our modules is irrelevant)

    from swarm.cas import ContentStore
    from swarm.dht import SwarmNode

    data_path = workdir / "payload.bin"
    with open(data_path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(BLOCK))
    payload = data_path.read_bytes()
    node = SwarmNode.start(workdir / "server-home")
    store = ContentStore(node, workdir / "server-home" / "cas")
    await store.start()
    cid = await store.put(data_path)

    async def send_all(writer: asyncio.StreamWriter) -> None:
        view = memoryview(payload)
        for off in range(0, len(payload), BLOCK):
            writer.write(view[off : off + BLOCK])
            await writer.drain()
        writer.close()

    async def raw_handler(_info, _reader, writer):
        await send_all(writer)

    p2p = await node.dht.replicate_p2p()
    await p2p.add_binary_stream_handler(RAW_PROTOCOL, raw_handler)
    tcp = await asyncio.start_server(lambda r, w: send_all(w), "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    print(json.dumps({"maddrs": node.visible_maddrs(), "peer_id": node.peer_id, "cid": cid, "tcp_port": port,
                      "bytes": len(payload)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the parent is done
    await store.close()
    node.shutdown()


async def read_all(reader: asyncio.StreamReader) -> int:
    n = 0
    while chunk := await reader.read(BLOCK):
        n += len(chunk)
    return n


async def client(info: dict, workdir: Path, repeat: int) -> dict:
    from hivemind.p2p import PeerID

    from swarm.cas import ContentStore
    from swarm.dht import NetworkConfig, SwarmNode

    node = SwarmNode.start(workdir / "client-home", NetworkConfig(initial_peers=tuple(info["maddrs"])))
    p2p = await node.dht.replicate_p2p()
    peer = PeerID.from_base58(info["peer_id"])
    size = info["bytes"]
    results: dict[str, list[float]] = {"cas": [], "hivemind_raw": [], "tcp_raw": []}
    for i in range(repeat):
        t0 = time.perf_counter()
        _, reader, writer = await p2p.call_binary_stream_handler(peer, RAW_PROTOCOL)
        assert await read_all(reader) == size
        writer.close()
        results["hivemind_raw"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", info["tcp_port"])
        assert await read_all(reader) == size
        writer.close()
        results["tcp_raw"].append(time.perf_counter() - t0)

        root = workdir / f"client-cas-{i}"  # a fresh store each time: nothing is reused
        store = ContentStore(node, root, provide_ttl=60)
        await store.start()
        t0 = time.perf_counter()
        out = await store.get(info["cid"], providers=[info["peer_id"]], provide=False)
        results["cas"].append(time.perf_counter() - t0)
        assert out.stat().st_size == size
        await store.close()
        shutil.rmtree(root)
    node.shutdown()
    mib = size / (1 << 20)
    best = {k: mib / min(v) for k, v in results.items()}
    paired = sorted(h / c for h, c in zip(results["hivemind_raw"], results["cas"], strict=True))  # same load
    return {
        "cas_vs_hivemind_raw_median_paired": round(paired[len(paired) // 2], 3),
        "cas_vs_hivemind_raw_paired": [round(x, 3) for x in paired],
        "mib": mib,
        "repeat": repeat,
        "mib_per_s": {k: round(v, 1) for k, v in best.items()},
        "cas_vs_hivemind_raw": round(best["cas"] / best["hivemind_raw"], 3),
        "cas_vs_tcp_raw": round(best["cas"] / best["tcp_raw"], 3),
        "seconds": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.mib))
        return
    workdir = Path(tempfile.mkdtemp(prefix="paris-cas-bench-"))
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(workdir), "--mib", str(args.mib)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        report = asyncio.run(client(info, workdir, args.repeat))
        server.stdin.write("done\n")
        server.stdin.flush()
        server.wait(30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 9)
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        r = report["mib_per_s"]
        print(f"{report['mib']:.0f} MiB over loopback, best of {report['repeat']}:")
        print(f"  CAS get (chunked, every chunk verified, on disk): {r['cas']:7.1f} MiB/s")
        print(f"  raw hivemind binary stream:                     {r['hivemind_raw']:8.1f} MiB/s")
        print(f"  raw asyncio TCP:                                {r['tcp_raw']:8.1f} MiB/s")
        print(f"  CAS / raw hivemind = {report['cas_vs_hivemind_raw']:.2f} best-of "
              f"({report['cas_vs_hivemind_raw_median_paired']:.2f} median of back-to-back pairs; target >= 0.7); "
              f"CAS / raw TCP = {report['cas_vs_tcp_raw']:.2f}")
        print(f"  back-to-back pairs, CAS / raw hivemind: {report['cas_vs_hivemind_raw_paired']}")


if __name__ == "__main__":
    main()
