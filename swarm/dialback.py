"""Dial-back over hivemind P2P: every daemon answers `paris-dialback/1` (serve_dialback), and `doctor` asks
peers to dial a fresh listener of its own (request_dialback). The listener has never connected to anyone, so
a success means a new inbound connection reached us, not a reused outbound one. Rules: protocol.swarm_dialback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

from hivemind.p2p import P2P, PeerID
from multiaddr import Multiaddr
from pydantic import ValidationError

from protocol.swarm_dialback import (
    DIAL_TIMEOUT_S,
    MAX_FRAME_BYTES,
    DialBackRequest,
    DialBackResponse,
    DialBudget,
    dial_targets,
    observed_ip,
)

log = logging.getLogger(__name__)

PROTOCOL_NAME = "paris-dialback/1"
_HEADER = struct.Struct(">I")


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes (at most {MAX_FRAME_BYTES})")
    return await reader.readexactly(length)


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


async def _dial(p2p: P2P, peer: PeerID, targets: list[str], timeout: float) -> tuple[bool, str]:
    try:
        await asyncio.wait_for(p2p._client.connect(peer, [Multiaddr(m) for m in targets]), timeout)
        return True, ""
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout:.0f} s"
    except Exception as e:  # p2pd reports dial failures as ControlFailure with its own text
        return False, str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    finally:
        with contextlib.suppress(Exception):
            await p2p._client.disconnect(peer)


async def answer(p2p: P2P, budget: DialBudget, stream_addr: str, request: DialBackRequest,
                 timeout: float = DIAL_TIMEOUT_S) -> DialBackResponse:
    """Decide and, if allowed, dial. Split from the stream handler so tests can call it with any address."""
    ip = observed_ip(stream_addr)
    targets = dial_targets(request.maddrs, ip)
    if not targets:
        return DialBackResponse(reachable=None, observed_ip=ip or "",
                                detail=f"none of the addresses is a plain TCP address at the IP you connect "
                                       f"from ({ip or 'unknown'}); announce the address peers see you at")
    peer = PeerID.from_base58(request.peer_id)
    with contextlib.suppress(Exception):
        if any(p.peer_id == peer for p in await p2p.list_peers()):
            return DialBackResponse(reachable=None, observed_ip=ip or "",
                                    detail="already connected to that peer; ask with a listener that has not "
                                           "dialed out")
    refusal = budget.take(ip or "", time.monotonic())
    if refusal:
        return DialBackResponse(reachable=None, observed_ip=ip or "", detail=refusal)
    try:
        ok, why = await _dial(p2p, peer, targets, timeout)
    finally:
        budget.release()
    return DialBackResponse(reachable=ok, dialed=tuple(targets), observed_ip=ip or "", detail=why)


async def serve_dialback(p2p: P2P, budget: DialBudget | None = None) -> None:
    """Answer dial-back requests on this p2p daemon (one request per stream)."""
    budget = budget or DialBudget()

    async def handler(info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = DialBackRequest.model_validate_json(await asyncio.wait_for(_read_frame(reader), 10.0))
            except (ValueError, ValidationError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                response = DialBackResponse(reachable=None, detail=f"malformed request: {str(e)[:200]}")
            else:
                response = await answer(p2p, budget, str(info.addr), request)
                log.info("dial-back for %s at %s: %s", request.peer_id, ",".join(response.dialed) or "-",
                         response.reachable)
            writer.write(_frame(response.model_dump_json().encode()))
            await writer.drain()
        except Exception:
            log.debug("dial-back stream failed", exc_info=True)
        finally:
            writer.close()

    await p2p.add_binary_stream_handler(PROTOCOL_NAME, handler)


async def request_dialback(p2p: P2P, helper: str, listener_id: str, maddrs: list[str],
                           timeout: float = DIAL_TIMEOUT_S + 7.0) -> DialBackResponse:
    """Ask `helper` to dial `listener_id` at `maddrs`. Raises if the helper cannot be reached or does not speak
    the protocol (a plain hivemind node)."""
    _, reader, writer = await asyncio.wait_for(
        p2p.call_binary_stream_handler(PeerID.from_base58(helper), PROTOCOL_NAME), timeout)
    try:
        request = DialBackRequest(peer_id=listener_id, maddrs=tuple(maddrs[:16]))
        writer.write(_frame(request.model_dump_json().encode()))
        await writer.drain()
        return DialBackResponse.model_validate_json(await asyncio.wait_for(_read_frame(reader), timeout))
    finally:
        writer.close()
