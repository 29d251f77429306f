"""The content store between real hivemind nodes on 127.0.0.1: providers found through the DHT, chunks over
P2P streams from several providers, and a node that fetched a CID becomes a provider of it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from swarm.cas import ContentStore
from swarm.dht import NetworkConfig, SwarmNode
from tests import zygote

pytestmark = pytest.mark.slow


def test_put_get_over_p2p_streams(tmp_path):
    src = tmp_path / "ckpt"
    (src / "expert_0").mkdir(parents=True)
    (src / "expert_0" / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (src / "config.json").write_text('{"k": 4}')

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        peers = NetworkConfig(initial_peers=tuple(a.visible_maddrs()))
        b = SwarmNode.start(tmp_path / "b", peers)
        c = SwarmNode.start(tmp_path / "c", peers)
        stores = [ContentStore(n, tmp_path / f"{name}-cas", chunk_size=256 * 1024)
                  for n, name in ((a, "a"), (b, "b"), (c, "c"))]
        try:
            for s in stores:
                await s.start()
            cid = await stores[0].put(src)
            assert await stores[0].find_providers(cid) == [a.peer_id]
            seen: list[tuple[int, int]] = []
            out_b = await stores[1].get(cid, tmp_path / "out-b", on_progress=lambda d, t: seen.append((d, t)))
            total = (3 << 20) + len('{"k": 4}')
            assert seen[-1] == (total, total) and all(t == total and 0 <= d <= t for d, t in seen)
            assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # progress only moves forward
            await stores[1].flush()  # b announces itself as a provider in the background
            assert set(await stores[1].find_providers(cid)) == {a.peer_id, b.peer_id}  # b provides now
            out_c = await stores[2].get(cid, tmp_path / "out-c")
            used = {p for p, s in stores[2].last_fetch.peers.items() if s.chunks}
            # from the live providers; which of them served depends on whose stream opened first (work goes only
            # to open streams, so that an unreachable provider never holds chunks: tests/swarm/test_cas.py)
            assert used and used <= {a.peer_id, b.peer_id}
            assert set(stores[2].last_fetch.peers) == {a.peer_id, b.peer_id}  # both were asked
            assert cid in stores[2].blobs.pins()
            # a node restarted on the same store serves its complete packs again (index rebuilt on start)
            again = ContentStore(b, tmp_path / "b-cas")
            again.reindex()
            first_chunk = stores[0].blobs.manifest(cid).entries[0].chunks[0].cid
            assert len(again.read(first_chunk)) > 0
            # garbage collection: unpinned packs go, pinned ones stay
            stores[2].unpin(cid)
            assert stores[2].gc(0) > 0 and not stores[2].packs.complete(cid)
            assert stores[1].gc(0) == 0 and stores[1].packs.complete(cid)
            return cid, out_b, out_c
        finally:
            for s in stores:
                await s.close()
            for n in (a, b, c):
                n.shutdown()

    _cid, out_b, out_c = asyncio.run(asyncio.wait_for(run(), 120))
    for out in (out_b, out_c):
        for rel in ("expert_0/model.safetensors", "config.json"):
            assert (hashlib.sha256((out / rel).read_bytes()).digest()
                    == hashlib.sha256((src / rel).read_bytes()).digest())


def test_downloads_are_bounded_by_what_the_caller_expects(tmp_path):
    """Nothing a peer announces makes a store write more than expected: the manifest is checked before the
    first chunk (announced size, the slot's bound, a manifest that repeats one chunk), and so are the free
    disk and the store's own limit."""
    from protocol.errors import IntegrityError, ParisError
    from protocol.swarm_cas import CasManifest, ChunkRef, FileEntry, chunk_cid

    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(3 << 20))

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        sa = ContentStore(a, tmp_path / "a-cas", chunk_size=1 << 20)
        sb = ContentStore(b, tmp_path / "b-cas", chunk_size=1 << 20)
        try:
            await sa.start()
            await sb.start()
            cid = await sa.put(src)
            with pytest.raises(IntegrityError, match="were announced"):
                await sb.get(cid, expected_bytes=123)
            with pytest.raises(IntegrityError, match="more than the"):
                await sb.get(cid, max_bytes=1 << 20)
            # one 1 MiB chunk listed 3,000 times: a 3 GiB claim in a 260 kB manifest
            block = os.urandom(1 << 20)
            sa.blobs.write(chunk_cid(block), block)
            fat = CasManifest(kind="file", name="fat.bin", chunk_size=1 << 20, total_bytes=3000 << 20,
                              entries=(FileEntry(path="fat.bin", size=3000 << 20, chunks=tuple(
                                  ChunkRef(cid=chunk_cid(block), size=1 << 20) for _ in range(3000))),))
            sa.blobs.write(fat.cid, fat.to_bytes())
            await sa.provide(fat.cid, fat.total_bytes)
            with pytest.raises(IntegrityError, match="more than the"):
                await sb.get(fat.cid, max_bytes=64 << 20)
            tight = ContentStore(b, tmp_path / "b-cas", chunk_size=1 << 20, free_space=lambda: 10 << 20)
            with pytest.raises(ParisError, match="not enough free disk"):
                await tight.get(cid)
            small = ContentStore(b, tmp_path / "b-cas", chunk_size=1 << 20, limit_bytes=2 << 20)
            with pytest.raises(ParisError, match="does not fit under the store's limit"):
                await small.get(cid)
            grown = sum(f.stat().st_size for f in (tmp_path / "b-cas").rglob("*") if f.is_file())
            assert grown < 1 << 20, grown  # only manifests were written, no chunk
            assert not sb.packs.complete(cid)
            path = await sb.get(cid, expected_bytes=3 << 20, max_bytes=4 << 20)  # what fits is fetched
            assert path.read_bytes() == src.read_bytes()
        finally:
            await sa.close()
            await sb.close()
            a.shutdown()
            b.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_a_flood_of_fake_providers_does_not_stall_a_fetch(tmp_path):
    """A hostile process announces 1000 throwaway identities as providers of a CID, each claiming to be newer
    than any honest record and pointing at a tarpit. A fresh node still fetches the CID from the one honest
    provider, ranked first because it is a live peer (rank_providers), in bounded time."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(1 << 20))

    async def run():
        boot = SwarmNode.start(tmp_path / "boot")
        peers = NetworkConfig(initial_peers=tuple(boot.visible_maddrs()))
        a = SwarmNode.start(tmp_path / "a", peers)
        c = SwarmNode.start(tmp_path / "c", peers)
        sa, sc = ContentStore(a, tmp_path / "a-cas"), ContentStore(c, tmp_path / "c-cas", request_timeout=10.0)
        attacker = None
        try:
            await sa.start()
            await sc.start()
            cid = await sa.put(src)
            attacker = zygote.popen(
                [sys.executable, "-m", "tests.swarm.fake_providers", "--cid", cid, "--count", "1000",
                 "--bytes", str(1 << 20), *(f"--initial-peer={m}" for m in boot.visible_maddrs())],
                cwd=root, env=zygote.ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = await asyncio.wait_for(asyncio.to_thread(attacker.stdout.readline), 240)
            flood = json.loads(line)
            assert flood["stored"] == 1000, flood
            seen = await c.get(f"paris/cas/{cid}")
            assert len(seen.records) >= 1000  # every fake is a valid record: honest nodes store and return them
            out = await asyncio.wait_for(sc.get(cid, tmp_path / "out"), 60)
            assert out.read_bytes() == src.read_bytes()
            assert {p for p, s in sc.last_fetch.peers.items() if s.chunks} == {a.peer_id}
            ranked = await sc.find_providers(cid)
            assert ranked[0] == a.peer_id and len(ranked) == sc.max_providers
        finally:
            if attacker is not None:
                with contextlib.suppress(Exception):
                    attacker.stdin.write('{"op": "quit"}\n')
                    attacker.stdin.flush()
                    attacker.wait(30)
                if attacker.poll() is None:
                    attacker.kill()
            for s in (sa, sc):
                await s.close()
            for n in (boot, a, c):
                n.shutdown()

    asyncio.run(asyncio.wait_for(run(), 400))


def test_a_part_of_a_folder_is_fetched_alone_from_the_wholes_providers(tmp_path):
    """`get(files=...)`: a checkpoint's sampling weights without its training state, every chunk verified
    against the whole's manifest, from whoever serves the whole; asking for a file it lacks is refused."""
    from protocol.errors import IntegrityError

    src = tmp_path / "step-00000100"
    src.mkdir()
    (src / "checkpoint.json").write_text('{"step": 100}')
    (src / "ema.safetensors").write_bytes(os.urandom(1 << 20))
    (src / "optimizer.safetensors").write_bytes(os.urandom(2 << 20))
    (src / "model.safetensors").write_bytes(os.urandom(1 << 20))

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        sa, sb = ContentStore(a, tmp_path / "a-cas", chunk_size=256 * 1024), ContentStore(b, tmp_path / "b-cas")
        try:
            await sa.start()
            await sb.start()
            cid = await sa.put(src)
            whole = (4 << 20) + len('{"step": 100}')
            part = await sb.get(cid, files=("checkpoint.json", "ema.safetensors"), expected_bytes=whole)
            assert sorted(p.name for p in part.iterdir()) == ["checkpoint.json", "ema.safetensors"]
            assert sb.fetched_bytes == (1 << 20) + len('{"step": 100}')  # not a byte of the training state
            assert (part / "ema.safetensors").read_bytes() == (src / "ema.safetensors").read_bytes()
            assert not sb.packs.complete(cid)  # the whole is not here, and we do not announce it
            await sb.flush()
            assert await sb.find_providers(cid) == [a.peer_id]
            again = await sb.get(cid, files=("ema.safetensors", "checkpoint.json"))  # the same part: no download
            assert again == part and sb.fetched_bytes == (1 << 20) + len('{"step": 100}')
            with pytest.raises(IntegrityError, match=r"holds no rng\.safetensors"):
                await sb.get(cid, files=("rng.safetensors",))
            with pytest.raises(IntegrityError, match="announced"):  # the whole's size is still checked
                await sb.get(cid, files=("checkpoint.json",), expected_bytes=whole - 1)
        finally:
            for s in (sa, sb):
                await s.close()
            for n in (a, b):
                n.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_verifiers_reserve_what_they_checked_so_the_trainer_uploads_it_about_once(tmp_path):
    """A trainer's checkpoint fetched by 3 verifiers one after another, with the store calls the checker makes
    (node.checker: `get(..., pin=False, provide=False, last_resort={trainer})`, then `lend` once sound): the
    trainer serves it about once, where it served it 3 times when verifiers did not re-serve. A rejected CID is
    withdrawn (dropped, no longer lent); a lent pack goes under a limit but survives a gc with none; and a fetch
    whose re-servers cannot serve falls back to the trainer."""
    size = 4 << 20
    (tmp_path / "old.bin").write_bytes(os.urandom(size))
    (tmp_path / "new.bin").write_bytes(os.urandom(size))

    async def run():
        t = SwarmNode.start(tmp_path / "t")
        peers = NetworkConfig(initial_peers=tuple(t.visible_maddrs()))
        vs = [SwarmNode.start(tmp_path / f"v{i}", peers) for i in range(3)]
        stores = [ContentStore(n, tmp_path / f"cas{i}", chunk_size=256 * 1024) for i, n in enumerate([t, *vs])]
        trainer, verifiers = stores[0], stores[1:]
        try:
            for s in stores:
                await s.start()
            old = await trainer.put(tmp_path / "old.bin")
            for v in verifiers:  # before: every verifier fetched everything from the trainer
                await v.get(old, pin=False, provide=False)
            served_old = trainer.served_bytes

            new = await trainer.put(tmp_path / "new.bin")
            for v in verifiers:  # one after another, each re-serving what it checked
                await v.get(new, pin=False, provide=False, last_resort=frozenset({t.peer_id}))
                assert v.lend(new, 60.0) and new in v.lent() and new not in v.blobs.pins()
                await v.flush()  # its provider record is in the DHT before the next one starts
            served_new = trainer.served_bytes - served_old
            assert served_old >= 3 * size, served_old
            assert served_new <= 1.5 * size, served_new
            assert set(await verifiers[2].find_providers(new)) == {t.peer_id, *(n.peer_id for n in vs)}

            v0, v1, v2 = verifiers
            v2.withdraw(new)  # rejected: no longer lent, its bytes gone (asking it finds nothing)
            assert new not in v2.lent() and not v2.packs.complete(new)
            v1.gc()  # a gc with no limit keeps what is lent, and drops what is merely unpinned
            assert v1.packs.complete(new) and not v1.packs.complete(old)
            assert v1.gc(0) > 0 and not v1.packs.complete(new) and new not in v1.lent()  # a limit evicts it
            assert not v1.lend(new, 60.0)  # not held: nothing to lend
            assert v0.gc(0) > 0 and not v0.packs.complete(new)
            before = trainer.served_bytes  # every re-server's record is still live, none can serve: the trainer
            await v0.get(new, pin=False, provide=False, last_resort=frozenset({t.peer_id}))
            assert v0.packs.complete(new) and trainer.served_bytes - before >= size
            return served_old, served_new
        finally:
            for s in stores:
                await s.close()
            for n in (t, *vs):
                n.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_two_gets_of_one_cid_at_once_download_it_once(tmp_path):
    """A node's verifier, trainer and seeder may ask for the same checkpoint at the same moment: the second get
    waits for the first download instead of writing into the same partial pack (whose rename then failed one of
    them), and both return the same complete files."""
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(os.urandom(6 << 20))

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        stores = [ContentStore(n, tmp_path / f"{name}-cas", chunk_size=256 * 1024) for n, name in ((a, "a"), (b, "b"))]
        try:
            for s in stores:
                await s.start()
            cid = await stores[0].put(src)
            got = await asyncio.gather(*(stores[1].get(cid, provide=False) for _ in range(3)))
            assert len(set(got)) == 1 and stores[1].packs.complete(cid)
            assert not list((tmp_path / "b-cas" / "packs").glob(".*.partial"))
            return got[0]
        finally:
            for s in stores:
                await s.close()
            for n in (a, b):
                n.shutdown()

    out = asyncio.run(asyncio.wait_for(run(), 120))
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
