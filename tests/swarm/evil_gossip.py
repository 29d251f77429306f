"""A hostile gossip peer for the integration tests: raw py-libp2p (no paris worker), publishing forged,
tampered, oversized, malformed and flooding messages to one node. Its own imports are libp2p only.

Run as `python tests/swarm/evil_gossip.py TOPIC TARGET_MADDR VICTIM_PEER_ID RUN` from the repo root.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from protocol.canonical import canonical_json
from protocol.swarm_gossip import ProgressEvent, sign_message


def messages(victim: str, run: str) -> dict[str, list[bytes]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ev = ProgressEvent(run_id=run, cluster=3, step=7, target=10)
    valid = json.loads(sign_message(key, ev, 1, time.time()))
    forged = {**valid, "sender": victim}  # claims to be the victim, signed by someone else
    tampered = {**valid, "event": {**valid["event"], "step": 8}}  # changed after signing
    flood = [sign_message(key, ev, 100 + i, time.time()) for i in range(400)]  # well over the burst of 100
    return {
        "forged": [canonical_json(forged)],
        "tampered": [canonical_json(tampered)],
        "oversized": [sign_message(key, ev, 2, time.time()) + b" " * 20_000],
        "malformed": [b"\xff\x00 not json", b'{"v": 1}'],
        "valid": [sign_message(key, ev, 3, time.time())],
        "flood": flood,
    }


async def main(topic: str, target: str, victim: str, run: str) -> None:
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(key_pair=create_new_key_pair(), listen_addrs=[listen], enable_mDNS=False, enable_upnp=False)
    router = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4, degree_high=12,
                       heartbeat_interval=1, spam_protection_enabled=False, eclipse_protection_enabled=False)
    pubsub = Pubsub(host, router, max_inbound_rpc_size=1 << 20)
    async with host.run(listen_addrs=[listen]), background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        await pubsub.subscribe(topic)
        with trio.fail_after(10):
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target)))
        await trio.sleep(2.0)  # subscriptions exchanged, mesh grafted
        for kind, batch in messages(victim, run).items():
            for i, data in enumerate(batch):
                await pubsub.publish(topic, data)
                if i % 10 == 9:  # up to ~200 messages/s, sustained: over any honest rate, under the send queues
                    await trio.sleep(0.05)
            print(json.dumps({"sent": kind, "count": len(batch)}), flush=True)
        await trio.sleep(2.0)
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:5])
