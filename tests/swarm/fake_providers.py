"""A hostile peer for the content-store tests: one real hivemind DHT node holding `--count` throwaway RSA keys
(1024-bit: cheap to make, and nothing in the protocol refuses them), each announcing itself as a provider of
`--cid` with a timestamp far in the future and an address that is a tarpit: a loopback TCP listener that
accepts connections and never answers. The records are well-formed and correctly signed; only the claim they
make is false. Prints {"act": "flooded", ...} when every record is stored; exits on {"op": "quit"} on stdin
(or after 15 minutes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import time

import hivemind
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time

from protocol.swarm_records import MAX_FUTURE_S, ProviderBody, encode_envelope, provider_key
from swarm.dht import NetworkConfig
from swarm.identity import peer_id_of_public_key
from swarm.validator import make_validators
from tests.swarm.attacker import serve_until_quit


def throwaway_key() -> RSAPrivateKey:
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key._private_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key


async def _flood(cid: str, count: int, port: int, nbytes: int, _dht, node) -> dict:
    """In the DHT process: make `count` keys, sign one provider record with each (as hivemind would for its
    owner) and hand them straight to every peer in our routing table, 200 per request (a store through the
    DHT's own traversal re-reads the whole key each time, which is quadratic in the flood)."""
    t0 = time.monotonic()
    key = provider_key(cid)
    key_id = DHTID.generate(source=key)
    expiration = get_dht_time() + 600
    records = []
    for _ in range(count):
        k = throwaway_key()
        public = k.get_public_key().to_bytes()
        body = ProviderBody(cid=cid, peer_id=peer_id_of_public_key(public), bytes=nbytes,
                            # "newer" than any honest record, as far ahead as validators still accept
                            maddrs=(f"/ip4/127.0.0.1/tcp/{port}",), ts=get_dht_time() + MAX_FUTURE_S - 30)
        subkey = b"[owner:" + public + b"]"
        rec = DHTRecord(key_id.to_bytes(), MSGPackSerializer.dumps(subkey),
                        MSGPackSerializer.dumps(encode_envelope(key, body)), expiration)
        records.append((subkey, RSASignatureValidator(k).sign_value(rec)))
    t1 = time.monotonic()
    stored = 0
    for peer in list(node.protocol.routing_table.peer_id_to_uid):
        for start in range(0, len(records), 200):
            part = records[start:start + 200]
            ok = await node.protocol.call_store(peer, [key_id] * len(part), [v for _, v in part], expiration,
                                                subkeys=[s for s, _ in part])
            stored = max(stored, start + sum(bool(x) for x in ok or ()))
    return {"stored": stored, "keys_s": round(t1 - t0, 1), "store_s": round(time.monotonic() - t1, 1)}


async def tarpit() -> tuple[asyncio.AbstractServer, int]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):  # the dialer left, or we exit
            await reader.read()  # never answer; the dialer gives up on its own timeout
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def main(args) -> None:
    server, port = await tarpit()
    net = NetworkConfig(initial_peers=tuple(args.initial_peer))  # loopback, no NAT traversal, no relays
    dht = hivemind.DHT(start=True, record_validators=make_validators(throwaway_key()), **net.dht_kwargs())
    result = await dht.run_coroutine(functools.partial(_flood, args.cid, args.count, port, args.bytes),
                                     return_future=True)
    print(json.dumps({"act": "flooded", "cid": args.cid, "port": port, **result}), flush=True)
    await serve_until_quit()
    server.close()
    dht.shutdown()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--initial-peer", action="append", required=True)
    p.add_argument("--cid", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--bytes", type=int, default=1)
    asyncio.run(main(p.parse_args()))
