"""Content-store throughput: fetch a 256 MiB file by CID (chunked, every chunk verified, written in place into
the store's copy of the file) and compare it, in the same run, with the same bytes sent over a raw hivemind
binary stream between the same two daemons (as they are, and written to a file as a download must), and over
raw asyncio TCP. Target: CAS/raw-hivemind >= 0.9. Then one download of the same CID from `--providers`
providers at once (default 3): the bytes each served and the aggregate rate, to show that a download draws on
all of them. Each transfer also reports how many cores the machine kept busy meanwhile.

    python benchmarks/cas_throughput.py [--mib 256] [--repeat 5] [--providers 3] [--json]
        [--link-mbit 1000 [--link-delay-ms 20]]

One process fetches; children started with --serve hold the data (the same bytes, so the same CID). By default
all on 127.0.0.1, where the cores, not a link, set the pace: on a 2-core machine the providers, their daemons
and the fetcher share them, so the aggregate rate says whether several providers cost anything, not what
several machines would give. `--link-mbit` (root) puts the providers and the fetcher in two network namespaces
joined by a veth pair shaped to that rate (tc tbf; `--link-delay-ms` adds netem delay where the kernel has it),
created and removed by the benchmark: a transfer across a link like a real one.
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


def listen_on(host: str) -> tuple[str, ...]:
    return (f"/ip4/{host}/tcp/0",)


async def serve(workdir: Path, name: str, host: str) -> None:
    from hivemind.p2p import P2P  # noqa: F401  (import order: hivemind before our modules is irrelevant)

    from swarm.cas import ContentStore
    from swarm.dht import NetworkConfig, SwarmNode

    data_path = workdir / "payload.bin"  # written once by the parent: every server holds the same CID
    payload = data_path.read_bytes()
    node = SwarmNode.start(workdir / f"{name}-home", NetworkConfig(host_maddrs=listen_on(host)))
    store = ContentStore(node, workdir / f"{name}-home" / "cas")
    await store.start()
    cid = await store.put(data_path)

    async def send_all(writer: asyncio.StreamWriter) -> None:
        view = memoryview(payload)
        for off in range(0, len(payload), BLOCK):
            writer.write(view[off : off + BLOCK])
            await writer.drain()

    async def raw_handler(_info, reader, writer):
        await send_all(writer)
        await reader.read()  # the reader closes first: p2pd resets a stream whose socket closed, unsent bytes too
        writer.close()

    async def tcp_handler(_reader, writer):
        await send_all(writer)
        writer.close()

    p2p = await node.dht.replicate_p2p()
    await p2p.add_binary_stream_handler(RAW_PROTOCOL, raw_handler)
    tcp = await asyncio.start_server(tcp_handler, host, 0)
    port = tcp.sockets[0].getsockname()[1]
    print(json.dumps({"maddrs": node.visible_maddrs(), "peer_id": node.peer_id, "cid": cid, "tcp_port": port,
                      "tcp_host": host, "bytes": len(payload)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the parent is done
    await store.close()
    node.shutdown()


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (0, 0 where there is none): what
    every process of the benchmark (both daemons, the Python processes) used, to tell a transfer limited by the
    cores from one limited by the stream."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


async def read_all(reader: asyncio.StreamReader, size: int, fd: int | None = None) -> int:
    """Read `size` bytes; with `fd`, write them there as they come (what a download must do with them)."""
    n = 0
    while n < size and (chunk := await reader.read(BLOCK)):
        if fd is not None:
            os.pwrite(fd, chunk, n)
        n += len(chunk)
    return n


async def client(info: dict, workdir: Path, repeat: int, others: list[dict], host: str) -> dict:
    from hivemind.p2p import PeerID

    from swarm.cas import ContentStore
    from swarm.dht import NetworkConfig, SwarmNode

    maddrs = tuple(m for i in (info, *others) for m in i["maddrs"])
    node = SwarmNode.start(workdir / "client-home", NetworkConfig(initial_peers=maddrs, host_maddrs=listen_on(host)))
    p2p = await node.dht.replicate_p2p()
    peer = PeerID.from_base58(info["peer_id"])
    size = info["bytes"]
    results: dict[str, list[float]] = {"cas": [], "hivemind_raw": [], "hivemind_raw_to_disk": [], "tcp_raw": []}
    busy: dict[str, list[float]] = {k: [] for k in results}  # cores kept busy, on average, during each transfer

    def record(kind: str, t0: float, c0: tuple[float, float]) -> None:
        seconds, c1 = time.perf_counter() - t0, cpu_seconds()
        results[kind].append(seconds)
        busy[kind].append((c1[0] - c0[0]) / seconds)

    for i in range(repeat):
        os.sync()  # each pair starts with no dirty pages: the disk writes of the setup or of the previous
        # download are not flushed while this one is timed (its own are, as they would be in real use)
        t0, c0 = time.perf_counter(), cpu_seconds()
        _, reader, writer = await p2p.call_binary_stream_handler(peer, RAW_PROTOCOL)
        assert await read_all(reader, size) == size
        writer.close()
        record("hivemind_raw", t0, c0)

        target = workdir / f"client-raw-{i}"  # the raw stream's bytes written to a new file, as a download's are
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(fd, size)
        t0, c0 = time.perf_counter(), cpu_seconds()
        _, reader, writer = await p2p.call_binary_stream_handler(peer, RAW_PROTOCOL)
        assert await read_all(reader, size, fd) == size
        writer.close()
        record("hivemind_raw_to_disk", t0, c0)
        os.close(fd)
        target.unlink()

        t0, c0 = time.perf_counter(), cpu_seconds()
        reader, writer = await asyncio.open_connection(info["tcp_host"], info["tcp_port"])
        assert await read_all(reader, size) == size
        writer.close()
        record("tcp_raw", t0, c0)

        root = workdir / f"client-cas-{i}"  # a fresh store each time: nothing is reused
        store = ContentStore(node, root, provide_ttl=60)
        await store.start()
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = await store.get(info["cid"], providers=[info["peer_id"]], provide=False)
        record("cas", t0, c0)
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
    paired_disk = sorted(h / c for h, c in zip(results["hivemind_raw_to_disk"], results["cas"], strict=True))
    return {
        "several_providers": many,
        "cas_vs_hivemind_raw_median_paired": round(paired[len(paired) // 2], 3),
        "cas_vs_hivemind_raw_paired": [round(x, 3) for x in paired],
        "mib": mib,
        "repeat": repeat,
        "mib_per_s": {k: round(v, 1) for k, v in best.items()},
        "cas_vs_hivemind_raw": round(best["cas"] / best["hivemind_raw"], 3),
        "cas_vs_tcp_raw": round(best["cas"] / best["tcp_raw"], 3),
        "cas_vs_hivemind_raw_to_disk": round(best["cas"] / best["hivemind_raw_to_disk"], 3),
        "cas_vs_hivemind_raw_to_disk_median_paired": round(paired_disk[len(paired_disk) // 2], 3),
        "seconds": {k: [round(x, 3) for x in v] for k, v in results.items()},
        "cores_busy_median": {k: round(sorted(v)[len(v) // 2], 2) for k, v in busy.items()},
        "cores": os.cpu_count(),
    }


class Link:
    """Two network namespaces joined by a veth pair whose both ends are shaped (tc: netem delay, then tbf rate):
    the providers live in one, the fetcher in the other, so the transfer crosses a link like a real one instead
    of loopback, where the cores and not the link set the pace. Created here and removed on exit (root only)."""

    def __init__(self, mbit: float, delay_ms: float) -> None:
        tag = os.getpid() % 100_000
        self.mbit, self.delay_ms = mbit, delay_ms
        self.ns = (f"pcb{tag}s", f"pcb{tag}c")
        net = 16 + tag % 200
        self.hosts = (f"10.213.{net}.1", f"10.213.{net}.2")
        self.made: list[str] = []

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"setting up the shaped link failed (it needs root, iproute2 and, for a delay, the "
                             f"netem qdisc): ip {' '.join(args)}: {r.stderr.strip()}")

    def __enter__(self) -> Link:
        try:
            for ns in self.ns:
                self._ip("netns", "add", ns)
                self.made.append(ns)
            a, b = f"{self.ns[0][-7:]}a", f"{self.ns[1][-7:]}b"
            self._ip("link", "add", a, "type", "veth", "peer", "name", b)
            for ns, dev, host in ((self.ns[0], a, self.hosts[0]), (self.ns[1], b, self.hosts[1])):
                self._ip("link", "set", dev, "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{host}/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
                burst = max(64 * 1024, int(self.mbit * 1e6 / 8 / 250))  # about 4 ms of the rate
                parent: tuple[str, ...] = ("root",)
                if self.delay_ms:
                    self._ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                             "delay", f"{self.delay_ms / 2}ms", "limit", "100000")
                    parent = ("parent", "1:")
                self._ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, *parent, "handle", "2:", "tbf",
                         "rate", f"{self.mbit}mbit", "burst", str(burst), "latency", "100ms")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in self.made:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []

    def prefix(self, side: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side]]

    @property
    def label(self) -> str:
        return f"a {self.mbit:g} Mbit/s link" + (f" with {self.delay_ms:g} ms round trip" if self.delay_ms else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--providers", type=int, default=3, help="providers of the multi-provider download (1: none)")
    ap.add_argument("--link-mbit", type=float, default=0.0, help=(
        "across a veth link of this rate between two network namespaces (root; 0: loopback)"))
    ap.add_argument("--link-delay-ms", type=float, default=0.0, help="the link's round-trip time (netem)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="server", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.name, args.host))
        return
    if args.client:  # inside the fetcher's namespace: the servers' details in a file, the report on stdout
        infos = json.loads((args.client / "infos.json").read_text())
        print(json.dumps(asyncio.run(client(infos[0], args.client, args.repeat, infos[1:], args.host))))
        return
    workdir = Path(tempfile.mkdtemp(prefix="paris-cas-bench-"))
    with open(workdir / "payload.bin", "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(BLOCK))
    link = Link(args.link_mbit, args.link_delay_ms) if args.link_mbit > 0 else None
    servers: list[subprocess.Popen] = []
    try:
        if link is not None:
            link.__enter__()
        serve_prefix, host = (link.prefix(0), link.hosts[0]) if link else ([], "127.0.0.1")
        servers = [subprocess.Popen([*serve_prefix, sys.executable, __file__, "--serve", str(workdir), "--name",
                                     f"server{i}", "--host", host], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, start_new_session=True)
                   for i in range(max(1, args.providers))]
        infos = []
        for server in servers:
            assert server.stdout is not None
            infos.append(json.loads(server.stdout.readline()))
        assert len({i["cid"] for i in infos}) == 1
        if link is None:
            report = asyncio.run(client(infos[0], workdir, args.repeat, infos[1:], "127.0.0.1"))
        else:
            (workdir / "infos.json").write_text(json.dumps(infos))
            r = subprocess.run([*link.prefix(1), sys.executable, __file__, "--client", str(workdir), "--repeat",
                                str(args.repeat), "--host", link.hosts[1]], stdout=subprocess.PIPE, text=True)
            if r.returncode:
                raise SystemExit(f"the fetcher failed (exit {r.returncode})")
            report = json.loads(r.stdout.strip().splitlines()[-1])
        report["path"] = link.label if link else "loopback"
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
        if link is not None:
            link.__exit__()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        r = report["mib_per_s"]
        print(f"{report['mib']:.0f} MiB over {report['path']}, best of {report['repeat']}:")
        print(f"  CAS get (chunked, every chunk verified, on disk): {r['cas']:7.1f} MiB/s")
        print(f"  raw hivemind binary stream:                     {r['hivemind_raw']:8.1f} MiB/s")
        print(f"  raw hivemind binary stream, written to a file:  {r['hivemind_raw_to_disk']:8.1f} MiB/s")
        print(f"  raw asyncio TCP:                                {r['tcp_raw']:8.1f} MiB/s")
        print(f"  CAS / raw hivemind = {report['cas_vs_hivemind_raw']:.2f} best-of "
              f"({report['cas_vs_hivemind_raw_median_paired']:.2f} median of back-to-back pairs; target >= 0.9); "
              f"CAS / raw TCP = {report['cas_vs_tcp_raw']:.2f}")
        print(f"  back-to-back pairs, CAS / raw hivemind: {report['cas_vs_hivemind_raw_paired']}")
        print(f"  CAS / raw hivemind written to a file = {report['cas_vs_hivemind_raw_to_disk']:.2f} best-of "
              f"({report['cas_vs_hivemind_raw_to_disk_median_paired']:.2f} median of pairs)")
        cb = report["cores_busy_median"]
        print(f"  cores busy during a transfer (median, of {report['cores']}): CAS {cb['cas']:.2f}, raw hivemind "
              f"{cb['hivemind_raw']:.2f} ({cb['hivemind_raw_to_disk']:.2f} written to a file), raw TCP "
              f"{cb['tcp_raw']:.2f}")
        many = report["several_providers"]
        if many:
            each = ", ".join(f"…{p[-6:]} {b / 2**20:.0f} MiB ({many['chunks_per_provider'][p]} chunks)"
                             for p, b in many["bytes_per_provider"].items())
            print(f"  one download from {many['providers']} providers: {many['mib_per_s']:.1f} MiB/s in all; "
                  f"bytes served by each: {each}")


if __name__ == "__main__":
    main()
