"""Chunk transfer between peers: a server that answers chunk requests from the blob store, and a parallel,
verifying, resumable downloader that spreads chunks over several providers.

Transport-agnostic on purpose: both sides work on an asyncio (reader, writer) pair. swarm.cas opens those
over hivemind P2P streams; the unit tests open them over loopback TCP to stage misbehaving peers.

Frames (streams are reused): request = u32 length + ChunkRequest JSON naming up to 16 CIDs; the response is,
for each CID in order, u8 status + u64 length + bytes. Batches avoid a round trip per chunk, and each chunk
is verified and written in a thread while the next one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import ValidationError

from protocol.errors import IntegrityError, ParisError
from protocol.swarm_cas import (
    MAX_CHUNK_SIZE,
    MAX_MANIFEST_BYTES,
    MAX_REQUEST_BYTES,
    STATUS_BAD_REQUEST,
    STATUS_MISSING,
    STATUS_OK,
    ChunkRequest,
    verify,
)

log = logging.getLogger(__name__)

PROTOCOL_NAME = "paris-cas/1"
_REQ_HEADER = struct.Struct(">I")
_RESP_HEADER = struct.Struct(">BQ")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OpenStream = Callable[[str], Awaitable[Streams]]


class ChunkSource(Protocol):
    """What the server reads from (a BlobStore, or a ContentStore that also serves complete packs)."""

    def read(self, cid: str, verify_bytes: bool = ...) -> bytes: ...


class ChunkSink(Protocol):
    """Where the downloader writes (a BlobStore, or a PackWriter that writes chunks in place)."""

    def has(self, cid: str) -> bool: ...

    def write(self, cid: str, data: bytes) -> None: ...


class FetchError(ParisError):
    """A download could not finish; the chunks fetched so far are kept and a retry resumes from them."""


async def serve_chunks(store: ChunkSource, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer chunk requests on one stream until the peer closes it. A malformed request ends the stream."""
    try:
        while True:
            try:
                (length,) = _REQ_HEADER.unpack(await reader.readexactly(_REQ_HEADER.size))
            except asyncio.IncompleteReadError:
                return
            if length > MAX_REQUEST_BYTES:
                writer.write(_RESP_HEADER.pack(STATUS_BAD_REQUEST, 0))
                return
            try:
                req = ChunkRequest.model_validate_json(await reader.readexactly(length))
            except ValidationError:
                writer.write(_RESP_HEADER.pack(STATUS_BAD_REQUEST, 0))
                return
            for cid in req.cids:
                try:
                    # not re-hashed here: the requester verifies every chunk and drops us if it does not match
                    data = await asyncio.to_thread(store.read, cid, verify_bytes=False)
                except (KeyError, IntegrityError):
                    writer.write(_RESP_HEADER.pack(STATUS_MISSING, 0))
                    continue
                writer.write(_RESP_HEADER.pack(STATUS_OK, len(data)))
                writer.write(data)
                await writer.drain()
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def send_request(writer: asyncio.StreamWriter, cids: list[str]) -> None:
    body = ChunkRequest(cids=tuple(cids)).model_dump_json().encode()
    writer.write(_REQ_HEADER.pack(len(body)) + body)
    await writer.drain()


async def read_response(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """One response frame: the bytes (unverified), or None if the peer lacks the chunk."""
    status, length = _RESP_HEADER.unpack(await reader.readexactly(_RESP_HEADER.size))
    if status == STATUS_MISSING:
        return None
    if status != STATUS_OK:
        raise ConnectionError(f"peer refused the request (status {status})")
    if length > max_size:
        raise IntegrityError(f"peer announced {length} bytes for a chunk of at most {max_size}")
    return await reader.readexactly(length)


@dataclass
class PeerState:
    failures: int = 0
    banned: bool = False
    reason: str = ""
    chunks: int = 0
    missing: set[str] = field(default_factory=set)


@dataclass
class FetchStats:
    peers: dict[str, PeerState]
    fetched_bytes: int = 0
    reused_chunks: int = 0


async def fetch_chunks(store: ChunkSink, chunks: dict[str, int], providers: list[str], open_stream: OpenStream,
                       *, streams_per_peer: int = 2, failure_budget: int = 3, timeout: float = 60.0,
                       max_size: int = MAX_CHUNK_SIZE, batch_size: int = 4) -> FetchStats:
    """Fetch every chunk in `chunks` (CID → size) that the store lacks, in parallel from `providers`.

    Each chunk is verified before it is stored. A peer that serves bytes that do not match is banned at once;
    a peer that times out or drops the stream is retried until it has used `failure_budget` failures; a peer
    that lacks a chunk is not asked for it again. Raises FetchError if some chunk cannot be had from anyone;
    the chunks stored so far stay, so calling again resumes.
    """
    stats = FetchStats(peers={p: PeerState() for p in providers})
    todo = {cid: size for cid, size in chunks.items() if not store.has(cid)}
    stats.reused_chunks = len(chunks) - len(todo)
    if not todo:
        return stats
    pending: asyncio.Queue[str] = asyncio.Queue()
    for cid in todo:
        pending.put_nowait(cid)
    remaining = set(todo)
    done = asyncio.Event()

    def usable(peer: str, cid: str) -> bool:
        st = stats.peers[peer]
        return not st.banned and cid not in st.missing

    def hopeless(cid: str) -> bool:
        return not any(usable(p, cid) for p in providers)

    async def worker(peer: str) -> None:
        st = stats.peers[peer]
        streams: Streams | None = None
        try:
            while not done.is_set() and not st.banned:
                batch = await take_batch(peer)
                if not batch:
                    continue
                writes: list[tuple[str, asyncio.Task]] = []
                try:
                    if streams is None:
                        streams = await asyncio.wait_for(open_stream(peer), timeout)
                    await asyncio.wait_for(send_request(streams[1], batch), timeout)
                    for i, cid in enumerate(batch):
                        data = await asyncio.wait_for(read_response(streams[0], min(max_size, todo[cid])), timeout)
                        if data is None:
                            st.missing.add(cid)
                            pending.put_nowait(cid)
                        else:  # verify and store in a thread while the next chunk arrives
                            writes.append((cid, asyncio.create_task(asyncio.to_thread(store.write, cid, data))))
                        batch[i] = ""
                except Exception as e:  # timeouts, resets, refusals, oversize: all count against the budget
                    streams = _close(streams)
                    if isinstance(e, IntegrityError):
                        st.failures = failure_budget
                    st.failures += 1
                    if st.failures >= failure_budget and not st.banned:
                        st.banned, st.reason = True, f"{st.failures} failures, last: {e!r}"
                        log.warning("dropping provider %s: %s", peer, st.reason)
                    for cid in batch:
                        if cid:
                            pending.put_nowait(cid)
                for cid, task in writes:
                    try:
                        await task
                    except IntegrityError as e:
                        if not st.banned:
                            st.banned, st.reason = True, f"served bad bytes: {e}"
                            log.warning("dropping provider %s: %s", peer, st.reason)
                        pending.put_nowait(cid)
                        continue
                    st.chunks += 1
                    stats.fetched_bytes += todo[cid]
                    remaining.discard(cid)
                if not remaining:
                    done.set()
        finally:
            _close(streams)
            if all(s.banned for s in stats.peers.values()):
                done.set()

    async def take_batch(peer: str) -> list[str]:
        """Up to `batch` chunks this peer may serve; an empty list after a short wait if there are none."""
        batch: list[str] = []
        skipped: list[str] = []
        try:
            while len(batch) < batch_size:
                cid = pending.get_nowait() if batch else await asyncio.wait_for(pending.get(), 0.2)
                if cid not in remaining or cid in batch:
                    continue
                (batch if usable(peer, cid) else skipped).append(cid)
                if skipped and not batch and len(skipped) >= pending.qsize() + 1:
                    break
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            pass
        for cid in skipped:
            pending.put_nowait(cid)
        if not batch:
            if remaining and all(hopeless(c) for c in remaining):
                done.set()
            await asyncio.sleep(0.01)
        return batch

    workers = [asyncio.create_task(worker(p)) for p in providers for _ in range(streams_per_peer)]
    try:
        await done.wait() if workers else None
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if remaining:
        why = "; ".join(f"{p}: {s.reason}" for p, s in stats.peers.items() if s.banned) or "no provider has them"
        raise FetchError(f"{len(remaining)} of {len(chunks)} chunks could not be fetched ({why}); "
                         "the rest are kept, retry to resume")
    return stats


async def fetch_blob(open_stream: OpenStream, providers: list[str], cid: str, *, timeout: float = 30.0,
                     max_size: int = MAX_MANIFEST_BYTES) -> bytes:
    """Fetch one small blob (a manifest) from the first provider that has it and serves it correctly."""
    errors = []
    for peer in providers:
        streams = None
        try:
            streams = await asyncio.wait_for(open_stream(peer), timeout)
            await asyncio.wait_for(send_request(streams[1], [cid]), timeout)
            data = await asyncio.wait_for(read_response(streams[0], max_size), timeout)
            if data is None:
                errors.append(f"{peer}: does not have it")
                continue
            verify(cid, data)
            return data
        except Exception as e:
            errors.append(f"{peer}: {e}")
        finally:
            _close(streams)
    raise FetchError(f"could not fetch {cid}: " + ("; ".join(errors) or "no providers"))


def _close(streams: Streams | None) -> None:
    if streams is not None:
        with contextlib.suppress(Exception):
            streams[1].close()
    return None
