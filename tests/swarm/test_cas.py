"""Content store without a DHT: CIDs that multiformats verifies, put/export round trips, the blob store's pins,
GC and crash leftovers, and the parallel fetcher against loopback TCP peers that are honest, lying, flaky or
gone (bad peers dropped, resumable after an interruption). Plus random bytes into every decoder."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID

from protocol.errors import IntegrityError
from protocol.swarm_cas import CasManifest, chunk_cid, decode_manifest, parse_cid, safe_relative_path
from swarm.blobstore import BlobStore
from swarm.cas import rank_providers
from swarm.cas_files import export_path, import_path
from swarm.cas_transfer import FetchError, fetch_blob, fetch_chunks, serve_chunks

CHUNK = 64 * 1024


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(3 * CHUNK + 17))
    (root / "sub" / "b.txt").write_bytes(b"hello" * 1000)
    (root / "sub" / "same.bin").write_bytes((root / "a.bin").read_bytes())  # deduplicated chunks
    (root / "empty").write_bytes(b"")
    return root


def _digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cids_are_standard_and_round_trip(tmp_path):
    src = _tree(tmp_path / "data")
    blobs = BlobStore(tmp_path / "store")
    manifest = import_path(blobs, src, CHUNK)
    root = CID.decode(manifest.cid)
    assert root.version == 1 and root.codec.name == "json" and root.hashfun.name == "sha2-256"
    assert root.raw_digest == hashlib.sha256(blobs.read(manifest.cid)).digest()
    for entry in manifest.entries:
        for c in entry.chunks:
            cid = CID.decode(c.cid)
            assert cid.codec.name == "raw" and cid.raw_digest == hashlib.sha256(blobs.read(c.cid)).digest()
    assert decode_manifest(manifest.cid, blobs.read(manifest.cid)) == manifest
    out = export_path(blobs, manifest, tmp_path / "out")
    assert out == tmp_path / "out" / "data" and _digest_tree(out) == _digest_tree(src)
    # a single file, and putting the same bytes again gives the same CID
    f = import_path(blobs, src / "a.bin", CHUNK)
    assert f.kind == "file" and import_path(blobs, src / "a.bin", CHUNK).cid == f.cid
    assert export_path(blobs, f, tmp_path / "o2").read_bytes() == (src / "a.bin").read_bytes()


def test_manifest_rejects_unsafe_paths_and_bad_sizes():
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "c:\\x", ""):
        with pytest.raises(ValueError):
            safe_relative_path(bad)
    c = chunk_cid(b"x")
    with pytest.raises(ValueError):
        CasManifest(kind="file", name="f", chunk_size=4, total_bytes=2,
                    entries=({"path": "f", "size": 2, "chunks": ({"cid": c, "size": 1},)},))
    with pytest.raises(IntegrityError):
        decode_manifest(c, b"x")  # a raw chunk is not a manifest


def test_blobstore_pins_gc_and_crash_leftovers(tmp_path):
    src = _tree(tmp_path / "data")
    blobs = BlobStore(tmp_path / "store")
    keep = import_path(blobs, src, CHUNK)
    blobs.pin(keep.cid)
    other_file = tmp_path / "other.bin"
    other_file.write_bytes(os.urandom(5 * CHUNK))
    drop = import_path(blobs, other_file, CHUNK)
    (blobs.blobs / ".junk.123.tmp").write_bytes(b"half a chunk")
    blobs = BlobStore(tmp_path / "store")  # "restart": leftovers of an interrupted write are gone
    assert not list(blobs.blobs.glob(".*.tmp"))
    assert blobs.pins().keys() == {keep.cid}
    freed = blobs.gc(0)
    assert freed >= 5 * CHUNK and not blobs.has(drop.cid)
    assert export_path(blobs, blobs.manifest(keep.cid), tmp_path / "o") is not None  # pinned data intact
    blobs.unpin(keep.cid)
    before = blobs.total_bytes()
    blobs.gc(before // 2)  # a size limit: only as much as needed goes, least recently used first
    assert 0 < blobs.total_bytes() <= before // 2 or blobs.total_bytes() == 0
    # a blob torn on disk is detected on a verified read, deleted and reported missing
    c = chunk_cid(b"abc")
    blobs.write(c, b"abc")
    blobs.path(c).write_bytes(b"abd")
    with pytest.raises(KeyError):
        blobs.read(c)
    assert not blobs.has(c)


# ---- the fetcher against loopback TCP peers -------------------------------------------------------------


class Peers:
    """TCP servers on 127.0.0.1, each serving a BlobStore with a behaviour: ok, corrupt, flaky, dies."""

    def __init__(self):
        self.servers: dict[str, tuple[asyncio.AbstractServer, int]] = {}
        self.served: dict[str, int] = {}

    async def add(self, name: str, store: BlobStore, behaviour: str = "ok", die_after: int = 10**9):
        async def handle(reader, writer):
            if behaviour in ("files", "short-files"):  # served with sendfile, as the ContentStore is
                await serve_chunks(_LocatedStore(store, short=behaviour == "short-files"), reader, writer)
                return
            if behaviour == "flaky":
                writer.close()
                return
            if behaviour == "corrupt":
                store_view = _CorruptingStore(store)
                await serve_chunks(store_view, reader, writer)
                return
            counting = _CountingStore(store, self, name, die_after, writer)
            await serve_chunks(counting, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers[name] = (server, server.sockets[0].getsockname()[1])
        self.served[name] = 0

    async def open(self, name: str):
        return await asyncio.open_connection("127.0.0.1", self.servers[name][1])

    async def close(self):
        for server, _ in self.servers.values():
            server.close()


class _CorruptingStore:
    def __init__(self, store):
        self.store = store

    def read(self, cid, verify_bytes=True):
        data = bytearray(self.store.read(cid))
        data[0] ^= 1
        return bytes(data)


class _LocatedStore:
    """A source that says where its chunks lie on disk, so that serve_chunks sends them from the files; with
    `short`, every file is cut to half its length behind the index's back (a damaged pack)."""

    def __init__(self, store, short=False):
        self.store, self.short, self.sent = store, short, 0

    def locate(self, cid):
        path = self.store.path(cid)
        if not path.exists():
            return None
        size = path.stat().st_size
        if self.short and size > 1:
            with open(path, "r+b") as f:
                f.truncate(size // 2)
        return path, 0, size

    def count(self, n):
        self.sent += n

    def read(self, cid, verify_bytes=True):
        raise AssertionError("a source that locates its chunks is served from its files")


class _CountingStore:
    def __init__(self, store, peers, name, die_after, writer):
        self.store, self.peers, self.name, self.die_after, self.writer = store, peers, name, die_after, writer

    def read(self, cid, verify_bytes=True):
        if self.peers.served[self.name] >= self.die_after:
            self.writer.transport.abort()
            raise KeyError(cid)
        self.peers.served[self.name] += 1
        return self.store.read(cid)


@pytest.fixture
def source(tmp_path):
    store = BlobStore(tmp_path / "src")
    f = tmp_path / "payload.bin"
    f.write_bytes(os.urandom(40 * CHUNK + 5))
    return store, import_path(store, f, CHUNK)


def test_fetch_from_several_peers_drops_liars_and_flaky(tmp_path, source):
    src, manifest = source

    async def run():
        peers = Peers()
        await peers.add("good1", src)
        await peers.add("good2", src)
        await peers.add("liar", src, "corrupt")
        await peers.add("flaky", src, "flaky")
        dst = BlobStore(tmp_path / "dst")
        data = await fetch_blob(peers.open, ["liar", "flaky", "good1"], manifest.cid)
        assert decode_manifest(manifest.cid, data) == manifest
        stats = await fetch_chunks(dst, manifest.unique_chunks(), ["liar", "good1", "flaky", "good2"],
                                   peers.open, failure_budget=2, batch_size=3)
        await peers.close()
        return dst, stats

    dst, stats = asyncio.run(run())
    assert stats.peers["liar"].banned and "bad bytes" in stats.peers["liar"].reason
    assert stats.peers["flaky"].banned
    assert stats.peers["good1"].chunks > 0 and stats.peers["good2"].chunks > 0  # spread over providers
    assert all(dst.has(c) for c in manifest.unique_chunks())
    out = export_path(dst, manifest, tmp_path / "out")
    assert out.read_bytes() == (tmp_path / "payload.bin").read_bytes()


def test_chunks_are_sent_from_files_and_a_damaged_file_is_missing_not_short(tmp_path, source):
    """The server sends what a source locates straight from its files (sendfile); a file shorter than the
    index says is answered as missing (the requester asks someone else), never as a short chunk that would
    put the stream out of step."""
    src, manifest = source
    damaged = BlobStore(tmp_path / "damaged")
    for cid in manifest.unique_chunks():
        damaged.write(cid, src.read(cid))

    async def run():
        peers = Peers()
        await peers.add("files", src, "files")
        await peers.add("short", damaged, "short-files")
        dst = BlobStore(tmp_path / "dst")
        stats = await fetch_chunks(dst, manifest.unique_chunks(), ["short", "files"], peers.open, batch_size=3)
        await peers.close()
        return dst, stats

    dst, stats = asyncio.run(asyncio.wait_for(run(), 60))
    assert not stats.peers["short"].banned and stats.peers["short"].missing and stats.peers["short"].chunks == 0
    assert stats.peers["files"].chunks == len(manifest.unique_chunks())
    out = export_path(dst, manifest, tmp_path / "out")
    assert out.read_bytes() == (tmp_path / "payload.bin").read_bytes()


def test_interrupted_fetch_resumes(tmp_path, source):
    src, manifest = source
    chunks = manifest.unique_chunks()

    async def run():
        peers = Peers()
        await peers.add("dies", src, die_after=10)
        dst = BlobStore(tmp_path / "dst")
        with pytest.raises(FetchError, match="retry to resume"):
            await fetch_chunks(dst, chunks, ["dies"], peers.open, failure_budget=2, streams_per_peer=1)
        have = sum(dst.has(c) for c in chunks)
        await peers.add("good", src)
        stats = await fetch_chunks(dst, chunks, ["good"], peers.open)
        await peers.close()
        return have, stats

    have, stats = asyncio.run(run())
    assert 0 < have < len(chunks)
    assert stats.reused_chunks == have and stats.peers["good"].chunks == len(chunks) - have


def test_no_provider_has_it(tmp_path, source):
    _, manifest = source

    async def run():
        peers = Peers()
        await peers.add("empty", BlobStore(tmp_path / "empty"))
        with pytest.raises(FetchError):
            await fetch_chunks(BlobStore(tmp_path / "dst"), manifest.unique_chunks(), ["empty"], peers.open)
        with pytest.raises(FetchError):
            await fetch_blob(peers.open, ["empty"], manifest.cid)
        await peers.close()

    asyncio.run(asyncio.wait_for(run(), 30))


# ---- random input never crashes a decoder ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_random_bytes_into_cas_decoders(tmp_path_factory, data):
    for cid in (chunk_cid(data), "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"):
        with pytest.raises(IntegrityError):
            decode_manifest(cid, data)
    with contextlib.suppress(IntegrityError):
        parse_cid(data.decode("latin-1"))

    class _Writer:
        def __init__(self):
            self.out = bytearray()

        def write(self, b):
            self.out += b

        async def drain(self):
            pass

        def close(self):
            pass

    async def serve_random():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        writer = _Writer()
        await serve_chunks(BlobStore(tmp_path_factory.mktemp("s")), reader, writer)
        return writer.out

    out = asyncio.run(serve_random())
    assert len(out) % 9 == 0  # only well-formed status frames (u8 + u64), never a crash
    assert all(struct.unpack(">BQ", out[i : i + 9])[1] == 0 for i in range(0, len(out), 9))


# ---- packs: downloads written in place, resumable, collectable ----------------------------------------------


def test_pack_is_written_in_place_and_resumes_after_a_crash(tmp_path):
    from swarm.packs import PackStore, PackWriter

    src = _tree(tmp_path / "data")
    blobs = BlobStore(tmp_path / "src")
    manifest = import_path(blobs, src, CHUNK)
    packs = PackStore(tmp_path / "dst")
    chunks = list(manifest.unique_chunks())
    first = PackWriter(packs, manifest.cid, manifest)
    for c in chunks[: len(chunks) // 2]:
        first.write(c, blobs.read(c))
    with pytest.raises(IntegrityError):
        first.write(chunks[-1], b"wrong bytes")
    del first  # the process "crashes" here: no finish()
    again = PackWriter(packs, manifest.cid, manifest)  # a restart picks up what was recorded
    assert {c for c in chunks if again.has(c)} == set(chunks[: len(chunks) // 2])
    with pytest.raises(IntegrityError, match="missing"):
        again.finish()
    for c in chunks:
        if not again.has(c):
            again.write(c, blobs.read(c))
    out = again.finish()
    assert packs.complete(manifest.cid) and _digest_tree(out) == _digest_tree(src)
    assert not (out.parent / ".have").exists()
    c0 = manifest.entries[0].chunks[0]
    assert hashlib.sha256(packs.read(c0.cid)).digest() == CID.decode(c0.cid).raw_digest  # servable by offset
    packs.remove(manifest.cid)
    assert not packs.complete(manifest.cid)
    with pytest.raises(KeyError):
        packs.read(c0.cid)


def test_streamed_chunks_into_a_pack_are_verified_refetched_and_resumable(tmp_path, source):
    """The downloader hands pieces to PackWriter.begin/feed/commit as they arrive: a liar's chunks are written
    but never recorded (and are fetched again from an honest peer), and the pack comes out byte-exact."""
    from swarm.packs import PackStore, PackWriter

    src, manifest = source
    chunks = manifest.unique_chunks()
    packs = PackStore(tmp_path / "dst")

    async def run():
        peers = Peers()
        await peers.add("liar", src, "corrupt")
        await peers.add("dies", src, die_after=7)
        writer = PackWriter(packs, manifest.cid, manifest)
        with pytest.raises(FetchError, match="retry to resume"):
            await fetch_chunks(writer, chunks, ["liar", "dies"], peers.open, failure_budget=2, batch_size=3)
        have = set(writer.have)
        again = PackWriter(packs, manifest.cid, manifest)  # as after a crash: only verified chunks count
        assert again.have == have and 0 < len(have) < len(chunks)
        await peers.add("good", src)
        stats = await fetch_chunks(again, chunks, ["liar", "good"], peers.open, batch_size=5)
        await peers.close()
        return again, stats, have

    again, stats, have = asyncio.run(asyncio.wait_for(run(), 60))
    assert stats.reused_chunks == len(have) and not stats.peers["liar"].chunks
    out = again.finish()
    assert out.read_bytes() == (tmp_path / "payload.bin").read_bytes()


def test_pack_chunk_checks_size_and_digest(tmp_path):
    from swarm.packs import PackStore, PackWriter

    blobs = BlobStore(tmp_path / "src")
    manifest = import_path(blobs, _tree(tmp_path / "data"), CHUNK)
    writer = PackWriter(PackStore(tmp_path / "dst"), manifest.cid, manifest)
    cid, size = next(iter(manifest.unique_chunks().items()))
    data = blobs.read(cid)
    with pytest.raises(IntegrityError):
        writer.begin(cid, size + 1)  # not the size the manifest says
    bad = writer.begin(cid, size)
    bad.feed(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError):
        bad.commit()
    too_long = writer.begin(cid, size)
    with pytest.raises(IntegrityError):
        too_long.feed(data + b"x")
    too_long.abort()
    assert not writer.has(cid)
    good = writer.begin(cid, size)
    for off in range(0, size, 1000):
        good.feed(data[off : off + 1000])
    good.commit()
    assert writer.has(cid) and PackWriter(writer.packs, manifest.cid, manifest).has(cid)


def test_a_full_disk_fails_the_download_at_once(tmp_path, source):
    """A local write error is not a peer's fault: no retry loop, a clear error, the peers stay unbanned."""
    import errno

    from swarm.cas_transfer import LocalWriteError

    src, manifest = source

    class FullDisk(BlobStore):
        def write(self, cid, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    async def run():
        peers = Peers()
        await peers.add("good", src)
        try:
            with pytest.raises(LocalWriteError, match="No space left on device"):
                await fetch_chunks(FullDisk(tmp_path / "full"), manifest.unique_chunks(), ["good"], peers.open)
        finally:
            await peers.close()

    asyncio.run(asyncio.wait_for(run(), 30))


async def _silent_server() -> tuple[asyncio.AbstractServer, int]:
    """A TCP server on 127.0.0.1 that accepts and never answers (a tarpit, or a peer behind a dead link)."""
    async def hang(reader, writer):
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_silent_and_fake_providers_cannot_stall_a_manifest_fetch(tmp_path, source):
    """A hundred providers that accept and never answer, or do not exist, ahead of the one real one: the
    manifest still arrives, asked of several at once with a bounded wait each."""
    src, manifest = source

    async def run():
        peers = Peers()
        await peers.add("good", src)

        silent, port = await _silent_server()

        async def open_stream(name):
            if name.startswith("silent"):
                return await asyncio.open_connection("127.0.0.1", port)
            if name.startswith("ghost"):
                raise ConnectionRefusedError(name)
            return await peers.open(name)

        names = [f"silent-{i}" for i in range(60)] + [f"ghost-{i}" for i in range(40)] + ["good"]
        served: list[str] = []
        try:
            data = await fetch_blob(open_stream, names, manifest.cid, timeout=0.5, parallel=16, served_by=served)
        finally:
            silent.close()
            await peers.close()
        return data, served

    data, served = asyncio.run(asyncio.wait_for(run(), 60))  # a stall would take 100 × 0.5 s and more
    assert decode_manifest(manifest.cid, data) == manifest and served == ["good"]


def test_providers_are_ranked_by_what_we_saw_not_by_what_they_claim():
    import random

    fakes = [f"fake-{i}" for i in range(1000)]
    announced = [*fakes[:500], "live-b", *fakes[500:], "served-a", "live-b"]
    ranked = rank_providers(announced, good={"served-a": 5.0, "old": 1.0}, live={"live-b", "boot"}, limit=32,
                            rng=random.Random(0))
    assert ranked[:2] == ["served-a", "live-b"] and len(ranked) == 32 and len(set(ranked)) == 32
    # the rest come in random order, not in the order (or with the timestamps) the records were read
    assert ranked[2:] != fakes[:30] and set(ranked[2:]) <= set(fakes)
    other = rank_providers(announced, good={}, live=set(), limit=2000, rng=random.Random(1))
    assert sorted(other) == sorted(set(announced))
    assert rank_providers([], good={"x": 1.0}, live={"x"}, limit=4) == []
    # a peer a recent fetch dropped as unreachable is passed over while anyone else remains
    assert rank_providers(["gone", "b"], good={"gone": 9.0}, live={"b"}, limit=4, failed={"gone"}) == ["b"]
    assert rank_providers(["gone"], good={}, live=set(), limit=4, failed={"gone"}) == ["gone"]


def test_a_peer_behind_a_dead_connection_is_dropped_and_its_chunks_go_to_the_others(tmp_path, source):
    """A partitioned provider: its stream opens (over a connection that still looks alive) but nothing ever
    answers. The fetch drops it after `answer_timeout`, not the long request timeout, and, with unreachable
    ones, never gives them a chunk to hold."""
    src, manifest = source

    async def run():
        peers = Peers()
        await peers.add("good", src)

        silent, port = await _silent_server()

        async def open_stream(name):
            if name == "cut-off":
                return await asyncio.open_connection("127.0.0.1", port)
            if name == "unreachable":
                await asyncio.sleep(2.0)  # a dial that hangs, then fails
                raise ConnectionRefusedError(name)
            return await peers.open(name)

        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            stats = await fetch_chunks(BlobStore(tmp_path / "dst"), manifest.unique_chunks(),
                                       ["cut-off", "unreachable", "good"], open_stream, timeout=60.0,
                                       answer_timeout=1.0, batch_size=2)
        finally:
            silent.close()
            await peers.close()
        return stats, loop.time() - began

    stats, seconds = asyncio.run(asyncio.wait_for(run(), 50))
    assert stats.peers["good"].chunks == len(manifest.unique_chunks())
    assert stats.peers["cut-off"].banned and stats.peers["cut-off"].chunks == 0
    assert stats.peers["unreachable"].chunks == 0
    assert seconds < 30  # the 60 s request timeout never ran out
