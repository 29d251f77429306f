"""The content store between real hivemind nodes on 127.0.0.1: providers found through the DHT, chunks over
P2P streams from several providers, and a node that fetched a CID becomes a provider of it."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from swarm.cas import ContentStore
from swarm.dht import NetworkConfig, SwarmNode

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
            assert set(await stores[1].find_providers(cid)) == {a.peer_id, b.peer_id}  # b provides now
            out_c = await stores[2].get(cid, tmp_path / "out-c")
            used = {p for p, s in stores[2].last_fetch.peers.items() if s.chunks}
            assert used == {a.peer_id, b.peer_id}  # chunks came from both providers
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
