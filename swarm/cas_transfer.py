"""Chunk transfer between peers: a server that answers chunk requests from the blob store, and a parallel,
verifying, resumable downloader that spreads chunks over several providers.

Transport-agnostic on purpose: both sides work on an asyncio (reader, writer) pair. swarm.cas opens those
over hivemind P2P streams; the unit tests open them over loopback TCP to stage misbehaving peers.

Frames (streams are reused): request = u32 length + ChunkRequest JSON naming up to 16 CIDs; the response is,
for each CID in order, u8 status + u64 length + bytes. Batches avoid a round trip per chunk, and the next
batch is requested before the current one is read, so a stream never waits on a round trip.

Received bytes are never assembled into whole chunks: each piece read from the stream goes to a thread of its
stream that hashes it and writes it in place (hashlib and pwrite release the GIL), so hashing and disk work
overlap the network. A chunk counts as had only when its whole sha-256 matches its CID (`commit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import struct
import threading
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
_SEND_SLICE = 1 << 20

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OpenStream = Callable[[str], Awaitable[Streams]]


class ChunkSource(Protocol):
    """What the server reads from (a BlobStore, or a ContentStore that also serves complete packs)."""

    def read(self, cid: str, verify_bytes: bool = ...) -> bytes: ...


class ChunkSink(Protocol):
    """Where the downloader writes (a BlobStore, or a PackWriter that writes chunks in place). A sink that
    also has `begin(cid, size) -> ChunkReceiver` (PackWriter) is fed each chunk piece by piece as it arrives;
    otherwise the pieces are joined and passed to `write`, which verifies."""

    def has(self, cid: str) -> bool: ...

    def write(self, cid: str, data: bytes) -> None: ...


class ChunkReceiver(Protocol):
    """One chunk arriving piece by piece (swarm.packs.PackChunk): `feed` each piece in order, then `commit`
    (verify the whole against the CID, raise IntegrityError if it does not match, else record it) or `abort`."""

    def feed(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _Buffered:
    """A ChunkReceiver for sinks that only take whole chunks (a BlobStore): joined and written at commit."""

    def __init__(self, sink: ChunkSink, cid: str, size: int):
        self.sink, self.cid, self.size = sink, cid, size
        self.pieces: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.pieces.append(data)

    def commit(self) -> None:
        data, self.pieces = b"".join(self.pieces), []
        self.sink.write(self.cid, data)  # verifies

    def abort(self) -> None:
        self.pieces = []


def _begin(sink: ChunkSink, cid: str, size: int) -> ChunkReceiver:
    begin = getattr(sink, "begin", None)
    return begin(cid, size) if begin is not None else _Buffered(sink, cid, size)


class _Feeder:
    """A thread per stream that runs, in order, the `feed`/`commit`/`abort` calls of the chunks it receives.
    Feed errors are kept and raised by the chunk's commit (or abort), whose result comes back as a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.errors: dict[int, BaseException] = {}
        self.thread = threading.Thread(target=self._run, name="cas-receive", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:  # ends at the sentinel that close() always queues
            op, chunk, arg = self.queue.get()
            if op == "stop":
                self._resolve(arg, None)
                return
            if op == "feed":
                if id(chunk) not in self.errors:
                    try:
                        chunk.feed(arg)
                    except BaseException as e:
                        self.errors[id(chunk)] = e
                continue
            error = self.errors.pop(id(chunk), None)
            try:
                if error is not None or op == "abort":
                    chunk.abort()
                else:
                    chunk.commit()
            except BaseException as e:
                error = error or e
            self._resolve(arg, error)

    def _resolve(self, fut: asyncio.Future, error: BaseException | None) -> None:
        def done() -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for the result
            self.loop.call_soon_threadsafe(done)

    def feed(self, chunk: ChunkReceiver, data: bytes) -> None:
        self.queue.put(("feed", chunk, data))

    def finish(self, chunk: ChunkReceiver, op: str) -> asyncio.Future:
        """Queue `commit` or `abort` after the chunk's pieces; the future says how it went."""
        fut = self.loop.create_future()
        self.queue.put((op, chunk, fut))
        return fut

    def close(self) -> asyncio.Future:
        fut = self.loop.create_future()
        self.queue.put(("stop", None, fut))
        return fut


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
            # not re-hashed here: the requester verifies every chunk and drops us if it does not match. The next
            # chunk is read from disk while this one is sent.
            reads = [asyncio.ensure_future(asyncio.to_thread(store.read, req.cids[0], verify_bytes=False))]
            try:
                for i in range(len(req.cids)):
                    if i + 1 < len(req.cids):
                        reads.append(asyncio.ensure_future(
                            asyncio.to_thread(store.read, req.cids[i + 1], verify_bytes=False)))
                    try:
                        data = await reads[i]
                    except (KeyError, IntegrityError):
                        writer.write(_RESP_HEADER.pack(STATUS_MISSING, 0))
                        continue
                    writer.write(_RESP_HEADER.pack(STATUS_OK, len(data)))
                    view = memoryview(data)  # in slices: the transport copies at most what the socket refuses
                    for off in range(0, len(view), _SEND_SLICE):
                        writer.write(view[off : off + _SEND_SLICE])
                        await writer.drain()
            finally:
                for r in reads:  # a read ahead that is not sent (the stream broke): retrieve, do not leak
                    if not r.done():
                        r.cancel()
                    r.add_done_callback(lambda f: f.cancelled() or f.exception())
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


async def read_header(reader: asyncio.StreamReader, max_size: int) -> int | None:
    """A response frame's length, or None if the peer lacks the chunk; its bytes follow on the stream."""
    status, length = _RESP_HEADER.unpack(await reader.readexactly(_RESP_HEADER.size))
    if status == STATUS_MISSING:
        return None
    if status != STATUS_OK:
        raise ConnectionError(f"peer refused the request (status {status})")
    if length > max_size:
        raise IntegrityError(f"peer announced {length} bytes for a chunk of at most {max_size}")
    return length


async def read_response(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """One response frame: the bytes (unverified), or None if the peer lacks the chunk."""
    length = await read_header(reader, max_size)
    return None if length is None else await reader.readexactly(length)


_PIECE = 1 << 20


async def _receive(reader: asyncio.StreamReader, length: int, feeder: _Feeder, chunk: ChunkReceiver) -> None:
    """Hand `length` bytes of the stream to `chunk` in pieces of `_PIECE` (the stream's reads come in 64 KiB:
    one thread hand-off per MiB instead of per read keeps the event loop and the hashing thread off each
    other's GIL)."""
    left = length
    while left > 0:
        n = min(left, _PIECE)
        feeder.feed(chunk, await reader.readexactly(n))
        left -= n


@dataclass
class PeerState:
    failures: int = 0
    banned: bool = False
    reason: str = ""
    chunks: int = 0
    bytes: int = 0  # verified chunk bytes this peer served us
    missing: set[str] = field(default_factory=set)


@dataclass
class FetchStats:
    peers: dict[str, PeerState]
    fetched_bytes: int = 0
    reused_chunks: int = 0


class LocalWriteError(ParisError):
    """Our own disk refused a write during a download: fail at once instead of retrying for ever."""


async def fetch_chunks(store: ChunkSink, chunks: dict[str, int], providers: list[str], open_stream: OpenStream,
                       *, streams_per_peer: int = 2, failure_budget: int = 3, timeout: float = 60.0,
                       max_size: int = MAX_CHUNK_SIZE, batch_size: int = 4, answer_timeout: float = 10.0
                       ) -> FetchStats:
    """Fetch every chunk in `chunks` (CID → size) that the store lacks, in parallel from `providers`.

    Each chunk is verified before it is stored. A peer that serves bytes that do not match is banned at once;
    a peer that times out or drops the stream is retried until it has used `failure_budget` failures, and one
    whose stream does not open, or does not answer within `answer_timeout` on a new stream (down, or cut off
    behind a connection that still looks open), is dropped for this fetch; a peer that lacks a chunk is not
    asked for it again. Raises FetchError if some chunk cannot be had from anyone;
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
    fatal: list[OSError] = []  # a local write error (a full disk): the whole download fails, nothing retries

    def usable(peer: str, cid: str) -> bool:
        st = stats.peers[peer]
        return not st.banned and cid not in st.missing

    def hopeless(cid: str) -> bool:
        return not any(usable(p, cid) for p in providers)

    async def worker(peer: str) -> None:
        st = stats.peers[peer]
        streams: Streams | None = None
        answered = False  # whether the current stream has answered anything yet
        feeder = _Feeder(asyncio.get_running_loop())
        inflight: list[list[str]] = []  # batches requested on this stream, oldest first ("" once answered)
        commits: list[tuple[str, asyncio.Future]] = []  # chunks received, being verified in the feeder thread
        chunk: ChunkReceiver | None = None
        chunk_id = ""

        async def settle(block: bool) -> None:
            while commits and (block or commits[0][1].done()):
                cid, fut = commits.pop(0)
                try:
                    await fut
                except OSError as e:  # our own disk failed: retrying cannot help
                    fatal.append(e)
                    done.set()
                    return
                except Exception as e:  # bad bytes ban the peer at once; anything else is retried
                    if isinstance(e, IntegrityError) and not st.banned:
                        st.banned, st.reason = True, f"served bad bytes: {e}"
                        log.warning("dropping provider %s: %s", peer, st.reason)
                    elif not isinstance(e, IntegrityError):
                        log.warning("storing %s failed: %r", cid, e)
                    pending.put_nowait(cid)
                    continue
                st.chunks += 1
                st.bytes += todo[cid]
                stats.fetched_bytes += todo[cid]
                remaining.discard(cid)
            if not remaining:
                done.set()

        def requeue_inflight() -> None:
            for b in inflight:
                for cid in b:
                    if cid:
                        pending.put_nowait(cid)
            inflight.clear()

        try:
            while not done.is_set() and not st.banned:
                await settle(block=not inflight or len(commits) > batch_size)
                if done.is_set() or st.banned:
                    break
                try:
                    while len(inflight) < 2:  # keep the next batch requested while this one arrives
                        if streams is None:  # before taking work: an unreachable peer must not hold any
                            try:
                                streams, answered = await asyncio.wait_for(open_stream(peer), timeout), False
                            except Exception:  # cannot reach it now (down, cut off): drop it for this fetch
                                st.failures = failure_budget - 1
                                raise
                        batch = await take_batch(peer, wait=not inflight)
                        if not batch:
                            break
                        inflight.append(batch)
                        await asyncio.wait_for(send_request(streams[1], batch), timeout)
                    if not inflight:
                        continue
                    batch = inflight[0]
                    for i, cid in enumerate(batch):
                        if not answered:  # a stream can open over a connection whose peer is gone (cut off):
                            try:  # its first answer must come soon, or the peer is dropped for this fetch
                                length = await asyncio.wait_for(read_header(streams[0], min(max_size, todo[cid])),
                                                                min(timeout, answer_timeout))
                            except asyncio.TimeoutError:
                                st.failures = failure_budget - 1
                                raise
                            answered = True
                        else:
                            length = await asyncio.wait_for(read_header(streams[0], min(max_size, todo[cid])),
                                                            timeout)
                        if length is None:
                            st.missing.add(cid)
                            pending.put_nowait(cid)
                        else:  # hashed and written in the feeder thread while the rest arrives
                            chunk, chunk_id = _begin(store, cid, length), cid
                            batch[i] = ""
                            await asyncio.wait_for(_receive(streams[0], length, feeder, chunk), timeout)
                            commits.append((cid, feeder.finish(chunk, "commit")))
                            chunk = None
                        batch[i] = ""
                    inflight.pop(0)
                except Exception as e:  # timeouts, resets, refusals, oversize: all count against the budget (an
                    # unreachable peer and one that sent bad bytes use it up at once)
                    streams = _close(streams)
                    if chunk is not None:  # its pieces are written before anyone else may fetch it
                        with contextlib.suppress(Exception):
                            await feeder.finish(chunk, "abort")
                        chunk = None
                        pending.put_nowait(chunk_id)
                    requeue_inflight()
                    if isinstance(e, IntegrityError):
                        st.failures = failure_budget
                    st.failures += 1
                    if st.failures >= failure_budget and not st.banned:
                        st.banned, st.reason = True, f"{st.failures} failures, last: {e!r}"
                        log.warning("dropping provider %s: %s", peer, st.reason)
            await settle(block=True)
        finally:
            _close(streams)
            requeue_inflight()  # e.g. requested from a peer that was just banned
            if chunk is not None:
                feeder.finish(chunk, "abort")
            closed = feeder.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(closed), 30)  # no write of ours outlives the fetch
            if all(s.banned for s in stats.peers.values()):
                done.set()

    async def take_batch(peer: str, wait: bool = True) -> list[str]:
        """Up to `batch` chunks this peer may serve; an empty list (after a short wait if `wait`) if none."""
        batch: list[str] = []
        skipped: list[str] = []
        try:
            while len(batch) < batch_size:
                cid = await asyncio.wait_for(pending.get(), 0.2) if wait and not batch else pending.get_nowait()
                if cid not in remaining or cid in batch:
                    continue
                (batch if usable(peer, cid) else skipped).append(cid)
                if skipped and not batch and len(skipped) >= pending.qsize() + 1:
                    break
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            pass
        for cid in skipped:
            pending.put_nowait(cid)
        if not batch and wait:
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
    if fatal:
        raise LocalWriteError(f"writing a downloaded chunk failed here: {fatal[0].strerror or fatal[0]} "
                              "(is the disk full?); the chunks stored so far are kept")
    if remaining:
        why = "; ".join(f"{p}: {s.reason}" for p, s in stats.peers.items() if s.banned) or "no provider has them"
        raise FetchError(f"{len(remaining)} of {len(chunks)} chunks could not be fetched ({why}); "
                         "the rest are kept, retry to resume")
    return stats


async def fetch_blob(open_stream: OpenStream, providers: list[str], cid: str, *, timeout: float = 10.0,
                     max_size: int = MAX_MANIFEST_BYTES, parallel: int = 16,
                     served_by: list[str] | None = None) -> bytes:
    """Fetch one small blob (a manifest) from whichever provider serves it correctly first, asking up to
    `parallel` providers at once, each for at most `timeout` seconds: a list of fake or silent providers
    delays a fetch by about len/parallel × timeout at worst, never for ever. `served_by` receives the winner."""
    errors: list[str] = []
    queue = list(providers)
    found: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def ask(peer: str) -> None:
        streams = None
        try:
            streams = await asyncio.wait_for(open_stream(peer), timeout)
            await asyncio.wait_for(send_request(streams[1], [cid]), timeout)
            data = await asyncio.wait_for(read_response(streams[0], max_size), timeout)
            if data is None:
                errors.append(f"{peer}: does not have it")
                return
            verify(cid, data)
            if not found.done():
                found.set_result(data)
                if served_by is not None:
                    served_by.append(peer)
        except Exception as e:  # a fake, silent or lying provider: note it and let the others answer
            errors.append(f"{peer}: {type(e).__name__} {e}".strip())
        finally:
            _close(streams)

    async def lane() -> None:
        while queue and not found.done():
            await ask(queue.pop(0))

    lanes = [asyncio.create_task(lane()) for _ in range(min(parallel, len(queue)))]
    try:
        done = asyncio.ensure_future(asyncio.gather(*lanes, return_exceptions=True))
        await asyncio.wait({found, done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in lanes:
            t.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
    if found.done():
        return found.result()
    raise FetchError(f"could not fetch {cid} from {len(providers)} provider(s): "
                     + ("; ".join(errors[:5]) or "no providers"))


def _close(streams: Streams | None) -> None:
    if streams is not None:
        with contextlib.suppress(Exception):
            streams[1].close()
    return None
