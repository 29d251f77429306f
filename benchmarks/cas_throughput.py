"""Content-store throughput on loopback: fetch a 256 MiB file by CID (chunked, every chunk verified, written
in place into the store's copy of the file) and compare it, in the same run, with the same bytes sent over a raw
hivemind binary stream between the same two daemons, and over raw asyncio TCP. Target: CAS/raw-hivemind ≥ 0.9.
Then one download of the same CID from `--providers` providers at once (default 3): the bytes each served
and the aggregate rate, to show that a download draws on all of them.

    python benchmarks/cas_throughput.py [--mib 256] [--repeat 5] [--providers 3] [--json]

One process fetches; children started with --serve hold the data (the same bytes, so the same CID). 127.0.0.1
only. On a 2-core machine the providers share the cores with the fetcher: the aggregate rate says whether
several providers cost anything, not what several machines would give.
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


async def serve(workdir: Path, name: str) -> None:
    from hivemind.p2p import P2P  # noqa: F401  (import order: hivemind before our modules is irrelevant)

    from swarm.cas import ContentStore
    from swarm.dht import SwarmNode

    data_path = workdir / "payload.bin"  # written once by the parent: every server holds the same CID
    payload = data_path.read_bytes()
    node = SwarmNode.start(workdir / f"{name}-home")
    store = ContentStore(node, workdir / f"{name}-home" / "cas")
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


async def client(info: dict, workdir: Path, repeat: int, others: list[dict]) -> dict:
    from hivemind.p2p import PeerID

    from swarm.cas import ContentStore
    from swarm.dht import NetworkConfig, SwarmNode

    maddrs = tuple(m for i in (info, *others) for m in i["maddrs"])
    node = SwarmNode.start(workdir / "client-home", NetworkConfig(initial_peers=maddrs))
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
    many = None
    if others:  # one download from every provider at once
        providers = [info["peer_id"], *(o["peer_id"] for o in others)]
        root = workdir / "client-cas-many"
        store = ContentStore(node, root, provide_ttl=60)
        await store.start()
        t0 = time.perf_counter()
        out = await store.get(info["cid"], providers=providers, provide=False)
        seconds = time.perf_counter() - t0
        assert out.stat().st_size == size
        stats = store.last_fetch
        assert stats is not None
        many = {"providers": len(providers), "seconds": round(seconds, 3),
                "mib_per_s": round(size / (1 << 20) / seconds, 1),
                "bytes_per_provider": {p: stats.peers[p].bytes for p in providers},
                "chunks_per_provider": {p: stats.peers[p].chunks for p in providers}}
        await store.close()
        shutil.rmtree(root)
    node.shutdown()
    mib = size / (1 << 20)
    best = {k: mib / min(v) for k, v in results.items()}
    paired = sorted(h / c for h, c in zip(results["hivemind_raw"], results["cas"], strict=True))  # same load
    return {
        "several_providers": many,
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
    ap.add_argument("--providers", type=int, default=3, help="providers of the multi-provider download (1: none)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="server", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.name))
        return
    workdir = Path(tempfile.mkdtemp(prefix="paris-cas-bench-"))
    with open(workdir / "payload.bin", "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(BLOCK))
    servers = [subprocess.Popen([sys.executable, __file__, "--serve", str(workdir), "--name", f"server{i}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
               for i in range(max(1, args.providers))]
    try:
        infos = []
        for server in servers:
            assert server.stdout is not None
            infos.append(json.loads(server.stdout.readline()))
        assert len({i["cid"] for i in infos}) == 1
        report = asyncio.run(client(infos[0], workdir, args.repeat, infos[1:]))
        for server in servers:
            assert server.stdin is not None
            server.stdin.write("done\n")
            server.stdin.flush()
        for server in servers:
            server.wait(30)
    finally:
        for server in servers:
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
              f"({report['cas_vs_hivemind_raw_median_paired']:.2f} median of back-to-back pairs; target >= 0.9); "
              f"CAS / raw TCP = {report['cas_vs_tcp_raw']:.2f}")
        print(f"  back-to-back pairs, CAS / raw hivemind: {report['cas_vs_hivemind_raw_paired']}")
        many = report["several_providers"]
        if many:
            each = ", ".join(f"…{p[-6:]} {b / 2**20:.0f} MiB ({many['chunks_per_provider'][p]} chunks)"
                             for p, b in many["bytes_per_provider"].items())
            print(f"  one download from {many['providers']} providers: {many['mib_per_s']:.1f} MiB/s in all; "
                  f"bytes served by each: {each}")


if __name__ == "__main__":
    main()
