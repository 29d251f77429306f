"""Chunk transfer between peers: a server that answers chunk requests from the blob store, and a parallel,
verifying, resumable downloader that spreads chunks over several providers.

Transport-agnostic on purpose: both sides work on an asyncio (reader, writer) pair. swarm.cas opens those
over hivemind P2P streams; the unit tests open them over loopback TCP to stage misbehaving peers.

Frames (streams are reused): request = u32 length + ChunkRequest JSON naming up to 16 CIDs; the response is,
for each CID in order, u8 status + u64 length + bytes. Batches avoid a round trip per chunk, and the next
batch is requested before the current one is read, so a stream never waits on a round trip.

Received chunk bytes bypass asyncio's StreamReader: each download stream gets a thread (`_DirectReader`) that
reads them straight from the stream's socket into one reusable buffer, hashes that piece and writes it in place
(recv_into, hashlib and pwrite all release the GIL), so the bytes are copied once in user space instead of three
times, the event loop stays free for the other streams, and no MiB-sized object is allocated per piece. A chunk
counts as had only when its whole sha-256 matches its CID (`commit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
_PIECE = 1 << 18  # how much of a chunk the receiving thread gathers before hashing and writing it (see _receive)

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

    def feed(self, data: bytes | memoryview) -> None: ...  # valid during the call only (a reused buffer)

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _Buffered:
    """A ChunkReceiver for sinks that only take whole chunks (a BlobStore): joined and written at commit."""

    def __init__(self, sink: ChunkSink, cid: str, size: int):
        self.sink, self.cid, self.size = sink, cid, size
        self.pieces: list[bytes] = []

    def feed(self, data: bytes | memoryview) -> None:
        self.pieces.append(bytes(data))  # `data` is the reader's buffer, reused for the next piece

    def commit(self) -> None:
        data, self.pieces = b"".join(self.pieces), []
        self.sink.write(self.cid, data)  # verifies

    def abort(self) -> None:
        self.pieces = []


def _begin(sink: ChunkSink, cid: str, size: int) -> ChunkReceiver:
    begin = getattr(sink, "begin", None)
    return begin(cid, size) if begin is not None else _Buffered(sink, cid, size)


class _DirectReader:
    """The reading side of one download stream, taken over from its StreamReader: the transport stops reading
    the socket, and a thread of ours reads a duplicate of its descriptor (the event loop's selector never sees
    it) with a deadline. The StreamReader's leftovers (anything it had buffered) are read first. Writes (the
    requests) still go through the stream's StreamWriter. `close` stops the thread and closes the duplicate."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        sock = writer.get_extra_info("socket")
        if sock is None:
            raise ConnectionError("this stream has no socket to read chunks from")
        writer.transport.pause_reading()
        self.pending = bytearray(getattr(reader, "_buffer", b""))  # what the StreamReader had already read
        if self.pending:
            reader._buffer.clear()  # type: ignore[attr-defined]
        self.sock = socket.socket(fileno=os.dup(sock.fileno()))  # shares the connection, not the selector entry
        self.buffer = memoryview(bytearray(_PIECE))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-receive")
        self.last: Future | None = None  # the thread's current job (kept even if its awaiter is cancelled)

    def _run(self, fn, *args) -> asyncio.Future:
        self.last = self.pool.submit(fn, *args)
        return asyncio.wrap_future(self.last)

    def _recv_into(self, view: memoryview, deadline: float) -> int:
        """Some bytes into `view` (at least one), before `deadline` (time.monotonic)."""
        if self.pending:
            n = min(len(view), len(self.pending))
            view[:n] = self.pending[:n]
            del self.pending[:n]
            return n
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the peer sent nothing in time")
        self.sock.settimeout(left)  # a timeout keeps the (shared) descriptor non-blocking, as the loop needs it
        n = self.sock.recv_into(view)
        if not n:
            raise asyncio.IncompleteReadError(b"", len(view))
        return n

    def _exactly(self, n: int, deadline: float) -> bytes:
        view, got = self.buffer[:n], 0
        while got < n:
            got += self._recv_into(view[got:], deadline)
        return bytes(view)

    async def read_header(self, max_size: int, timeout: float) -> int | None:
        """A response frame's length, or None if the peer lacks the chunk (as `read_header`)."""
        return parse_header(await self._run(self._exactly, _RESP_HEADER.size, time.monotonic() + timeout), max_size)

    def _receive(self, length: int, chunk: ChunkReceiver, deadline: float) -> BaseException | None:
        """Read `length` bytes into `chunk` (stream errors raise: the stream is out of step), then commit it;
        what the chunk itself refused (a mismatch, our disk) is returned, the stream being still in step."""
        # Pieces of 256 KiB, not larger: the kernel allocates page-cache folios the size of a write, and big
        # ones come from the free blocks a VM reports to its host (Linux free page reporting), which it must
        # then fault in again: 1 MiB writes cost 0.5 s of CPU more per 256 MiB every other download on this
        # project's machines (benchmarks/cas_throughput.py), 256 KiB ones never did.
        left, failed = length, None
        while left > 0:
            n, got = min(left, _PIECE), 0
            while got < n:  # a whole piece first: one hash update and one write per piece, not per read
                got += self._recv_into(self.buffer[got:n], deadline)
            if failed is None:
                try:
                    chunk.feed(self.buffer[:n])
                except BaseException as e:  # keep reading: the rest of the chunk must leave the stream
                    failed = e
            left -= n
        if failed is not None:
            chunk.abort()
            return failed
        try:
            chunk.commit()
        except BaseException as e:
            return e
        return None

    async def receive(self, length: int, chunk: ChunkReceiver, timeout: float) -> asyncio.Future:
        """Receive and commit one chunk; returns a done future holding the commit's outcome (for `settle`)."""
        error = await self._run(self._receive, length, chunk, time.monotonic() + timeout)
        fut = asyncio.get_running_loop().create_future()
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
        fut.add_done_callback(lambda f: f.exception())  # a refused chunk is handled by settle, not "never retrieved"
        return fut

    async def close(self) -> None:
        """Wake the thread if it waits on the socket, let it finish (no write of ours outlives the fetch), close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.last is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.wrap_future(self.last), 30)
        self.pool.shutdown(wait=False)
        self.sock.close()


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
            # not re-hashed here: the requester verifies every chunk and drops us if it does not match
            if getattr(store, "locate", None) is not None:
                await _send_files(store, req.cids, writer)
                continue
            # a source that only reads: the next chunk is read from disk while this one is sent
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


def _open_located(store: ChunkSource, cid: str):
    """(open file, offset, size) of `cid` in `store`; KeyError if it has no such bytes (anymore)."""
    try:
        loc = store.locate(cid)  # type: ignore[attr-defined]
    except IntegrityError:  # shaped like a CID, yet not one we could hold
        raise KeyError(cid) from None
    if loc is None:
        raise KeyError(cid)
    path, offset, size = loc
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the caller once sent)
    except OSError:
        raise KeyError(cid) from None
    if os.fstat(f.fileno()).st_size < offset + size:  # shorter than the index says: never send a short chunk
        f.close()
        raise KeyError(cid)
    return f, offset, size


async def _send_files(store: ChunkSource, cids, writer: asyncio.StreamWriter) -> None:
    """Answer one request from files: each chunk goes from the page cache to the socket (sendfile), never
    through Python; a source with `count(n)` is told what was sent."""
    loop = asyncio.get_running_loop()
    count = getattr(store, "count", None)
    for cid in cids:
        try:
            f, offset, size = await asyncio.to_thread(_open_located, store, cid)
        except KeyError:
            writer.write(_RESP_HEADER.pack(STATUS_MISSING, 0))
            continue
        try:
            writer.write(_RESP_HEADER.pack(STATUS_OK, size))
            try:
                await loop.sendfile(writer.transport, f, offset, size)
            except RuntimeError as e:  # "Transport is closing": the requester hung up (it has what it wanted)
                raise ConnectionError(str(e)) from None
        finally:
            f.close()
        if count is not None:
            count(size)


async def send_request(writer: asyncio.StreamWriter, cids: list[str]) -> None:
    body = ChunkRequest(cids=tuple(cids)).model_dump_json().encode()
    writer.write(_REQ_HEADER.pack(len(body)) + body)
    await writer.drain()


async def read_header(reader: asyncio.StreamReader, max_size: int) -> int | None:
    """A response frame's length, or None if the peer lacks the chunk; its bytes follow on the stream."""
    return parse_header(await reader.readexactly(_RESP_HEADER.size), max_size)


def parse_header(raw: bytes, max_size: int) -> int | None:
    """Decode a response frame's header: its length, None for a missing chunk; a refusal or a length over
    `max_size` (what we expect, not what the peer says) raises."""
    status, length = _RESP_HEADER.unpack(raw)
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
    limits = _Limits(failure_budget, timeout, max_size, batch_size, answer_timeout)
    download = _Download(store, chunks, providers, limits)
    if download.remaining:
        await download.run(open_stream, streams_per_peer)
    return download.result()


@dataclass(frozen=True)
class _Limits:
    """The knobs of one download (see fetch_chunks)."""

    failure_budget: int
    timeout: float
    max_size: int
    batch_size: int
    answer_timeout: float


class _Download:
    """What every stream of one fetch_chunks call shares: the chunks still wanted, the queue they are handed
    out from, each provider's record (stats), and how the download ends (`done`: every chunk stored, or none
    left that any usable provider could serve, or our own disk failed: `fatal`)."""

    def __init__(self, store: ChunkSink, chunks: dict[str, int], providers: list[str], limits: _Limits) -> None:
        self.store, self.chunks, self.providers, self.limits = store, chunks, providers, limits
        self.stats = FetchStats(peers={p: PeerState() for p in providers})
        self.todo = {cid: size for cid, size in chunks.items() if not store.has(cid)}
        self.stats.reused_chunks = len(chunks) - len(self.todo)
        self.pending: asyncio.Queue[str] = asyncio.Queue()
        for cid in self.todo:
            self.pending.put_nowait(cid)
        self.remaining = set(self.todo)
        self.done = asyncio.Event()
        self.fatal: list[OSError] = []  # a local write error (a full disk): the whole download fails, nothing retries

    def usable(self, peer: str, cid: str) -> bool:
        st = self.stats.peers[peer]
        return not st.banned and cid not in st.missing

    def hopeless(self, cid: str) -> bool:
        return not any(self.usable(p, cid) for p in self.providers)

    def stored(self, peer: str, cid: str) -> None:
        """A chunk from `peer` was verified and written."""
        st = self.stats.peers[peer]
        st.chunks += 1
        st.bytes += self.todo[cid]
        self.stats.fetched_bytes += self.todo[cid]
        self.remaining.discard(cid)

    async def take_batch(self, peer: str, wait: bool = True) -> list[str]:
        """Up to `batch_size` chunks this peer may serve; an empty list (after a short wait if `wait`) if none."""
        batch: list[str] = []
        skipped: list[str] = []
        try:
            while len(batch) < self.limits.batch_size:
                cid = (await asyncio.wait_for(self.pending.get(), 0.2) if wait and not batch
                       else self.pending.get_nowait())
                if cid not in self.remaining or cid in batch:
                    continue
                (batch if self.usable(peer, cid) else skipped).append(cid)
                if skipped and not batch and len(skipped) >= self.pending.qsize() + 1:
                    break
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            pass
        for cid in skipped:
            self.pending.put_nowait(cid)
        if not batch and wait:
            if self.remaining and all(self.hopeless(c) for c in self.remaining):
                self.done.set()
            await asyncio.sleep(0.01)
        return batch

    async def run(self, open_stream: OpenStream, streams_per_peer: int) -> None:
        workers = [asyncio.create_task(_ProviderStream(self, peer, open_stream).run())
                   for peer in self.providers for _ in range(streams_per_peer)]
        try:
            await self.done.wait() if workers else None
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def result(self) -> FetchStats:
        if self.fatal:
            raise LocalWriteError(f"writing a downloaded chunk failed here: {self.fatal[0].strerror or self.fatal[0]} "
                                  "(is the disk full?); the chunks stored so far are kept")
        if self.remaining:
            banned = [f"{p}: {s.reason}" for p, s in self.stats.peers.items() if s.banned]
            why = "; ".join(banned) or "no provider has them"
            raise FetchError(f"{len(self.remaining)} of {len(self.chunks)} chunks could not be fetched ({why}); "
                             "the rest are kept, retry to resume")
        return self.stats


class _ProviderStream:
    """One download stream to one provider: requests batches (keeping the next one requested while the current
    one arrives), has its thread receive each chunk in place, then settles the chunks' commits. Whatever it
    had requested or was receiving goes back to the shared queue when the stream fails or the peer is dropped."""

    def __init__(self, download: _Download, peer: str, open_stream: OpenStream) -> None:
        self.dl, self.peer, self.open_stream = download, peer, open_stream
        self.st = download.stats.peers[peer]
        self.streams: Streams | None = None
        self.direct: _DirectReader | None = None  # reads the current stream's answers
        self.answered = False  # whether the current stream has answered anything yet
        self.inflight: list[list[str]] = []  # batches requested on this stream, oldest first ("" once answered)
        self.commits: list[tuple[str, asyncio.Future]] = []  # chunks received: their commit's outcome
        self.chunk: ChunkReceiver | None = None  # the chunk being received, and its CID
        self.chunk_id = ""

    @property
    def _over(self) -> bool:
        return self.dl.done.is_set() or self.st.banned

    async def run(self) -> None:
        limits = self.dl.limits
        try:
            while not self._over:
                await self._settle(block=not self.inflight or len(self.commits) > limits.batch_size)
                if self._over:
                    break
                try:
                    await self._request()
                    if self.inflight:
                        await self._receive_batch()
                except Exception as e:  # timeouts, resets, refusals, oversize: all count against the budget (an
                    # unreachable peer and one that sent bad bytes use it up at once)
                    await self._drop_stream()
                    self._requeue_inflight()
                    self._failed(e)
            await self._settle(block=True)
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._drop_stream())  # no write of ours outlives the fetch
            self._requeue_inflight()  # e.g. requested from a peer that was just banned
            if all(s.banned for s in self.dl.stats.peers.values()):
                self.dl.done.set()

    async def _request(self) -> None:
        """Keep up to two batches requested on an open stream (opened before taking work: an unreachable peer
        must not hold any)."""
        while len(self.inflight) < 2:
            if self.streams is None:
                try:
                    self.streams = await asyncio.wait_for(self.open_stream(self.peer), self.dl.limits.timeout)
                    self.answered = False
                    self.direct = _DirectReader(*self.streams)
                except Exception:  # cannot reach it now (down, cut off): drop it for this fetch
                    self.st.failures = self.dl.limits.failure_budget - 1
                    raise
            batch = await self.dl.take_batch(self.peer, wait=not self.inflight)
            if not batch:
                break
            self.inflight.append(batch)
            await asyncio.wait_for(send_request(self.streams[1], batch), self.dl.limits.timeout)

    async def _receive_batch(self) -> None:
        """Read the answers to the oldest requested batch: a missing chunk goes back to the queue (not to be
        asked of this peer again), a present one is read, hashed and written in place by the stream's thread,
        then committed."""
        limits, batch, direct = self.dl.limits, self.inflight[0], self.direct
        assert direct is not None
        for i, cid in enumerate(batch):
            cap = min(limits.max_size, self.dl.todo[cid])
            if not self.answered:  # a stream can open over a connection whose peer is gone (cut off):
                try:  # its first answer must come soon, or the peer is dropped for this fetch
                    length = await direct.read_header(cap, min(limits.timeout, limits.answer_timeout))
                except (asyncio.TimeoutError, TimeoutError):  # (distinct classes before 3.11)
                    self.st.failures = limits.failure_budget - 1
                    raise
                self.answered = True
            else:
                length = await direct.read_header(cap, limits.timeout)
            if length is None:
                self.st.missing.add(cid)
                self.dl.pending.put_nowait(cid)
            else:
                self.chunk, self.chunk_id = _begin(self.dl.store, cid, length), cid
                batch[i] = ""
                self.commits.append((cid, await direct.receive(length, self.chunk, limits.timeout)))
                self.chunk = None
            batch[i] = ""
        self.inflight.pop(0)

    async def _settle(self, block: bool) -> None:
        """Take the outcome of received chunks' commits (all of them if `block`, else those already done)."""
        dl = self.dl
        while self.commits and (block or self.commits[0][1].done()):
            cid, fut = self.commits.pop(0)
            try:
                await fut
            except OSError as e:  # our own disk failed: retrying cannot help
                dl.fatal.append(e)
                dl.done.set()
                return
            except Exception as e:  # bad bytes ban the peer at once; anything else is retried
                if isinstance(e, IntegrityError) and not self.st.banned:
                    self._ban(f"served bad bytes: {e}")
                elif not isinstance(e, IntegrityError):
                    log.warning("storing %s failed: %r", cid, e)
                dl.pending.put_nowait(cid)
                continue
            dl.stored(self.peer, cid)
        if not dl.remaining:
            dl.done.set()

    def _failed(self, e: Exception) -> None:
        if isinstance(e, IntegrityError):
            self.st.failures = self.dl.limits.failure_budget
        self.st.failures += 1
        if self.st.failures >= self.dl.limits.failure_budget and not self.st.banned:
            self._ban(f"{self.st.failures} failures, last: {e!r}")

    def _ban(self, reason: str) -> None:
        self.st.banned, self.st.reason = True, reason
        log.warning("dropping provider %s: %s", self.peer, reason)

    async def _drop_stream(self) -> None:
        if self.direct is not None:
            await self.direct.close()  # its thread has let go of the chunk once this returns
        self.direct, self.streams = None, _close(self.streams)
        if self.chunk is not None:  # its pieces are written before anyone else may fetch it
            with contextlib.suppress(Exception):
                self.chunk.abort()
            self.chunk = None
            self.dl.pending.put_nowait(self.chunk_id)

    def _requeue_inflight(self) -> None:
        for batch in self.inflight:
            for cid in batch:
                if cid:
                    self.dl.pending.put_nowait(cid)
        self.inflight.clear()


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
