"""`ContentStore`: put files and directories under a root CID, get them back from any providers, serve what
we hold to peers, and announce ourselves as a provider in the DHT.

Bulk bytes move over hivemind P2P streams (docs/design.md §4: bitswap is too slow for checkpoints). Providers are
DHT records (`paris/cas/<cid>`, one per owner, with expiry) that we re-announce while the CID stays pinned, or,
for what we fetched and checked without pinning it (`lend`), while we still hold it and for a bounded time: so
that a checkpoint's later verifiers fetch it from its earlier ones (`get(..., last_resort=...)`), not all from
its trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hivemind.p2p import P2P, PeerID
from hivemind.utils.timed_storage import get_dht_time
from multiaddr import Multiaddr

from protocol.errors import IntegrityError, ParisError
from protocol.swarm_cas import DEFAULT_CHUNK_SIZE, CasManifest, decode_manifest
from protocol.swarm_records import ProviderBody, provider_key
from swarm.blobstore import BlobStore
from swarm.cas_files import copy_out, import_path
from swarm.cas_transfer import PROTOCOL_NAME, FetchError, FetchStats, Streams, fetch_blob, fetch_chunks, serve_chunks
from swarm.dht import SwarmNode
from swarm.packs import PackStore, PackWriter

log = logging.getLogger(__name__)

FAILED_FOR_S = 120.0  # a provider dropped as unreachable is passed over for this long (while others remain)


def rank_providers(announced: list[str], *, good: dict[str, float], live: set[str], limit: int,
                   rng: random.Random | None = None, failed: set[str] = frozenset()) -> list[str]:
    """The order in which to ask the peers that announce a CID, at most `limit` of them: those that served us
    correctly before (most recent first), then those that are live (connected, or in the DHT routing table),
    then the rest in random order. Nothing a record says ranks it (a timestamp, a size): a flood of fake
    provider records from throwaway keys, however new they claim to be, cannot push live peers out.
    Peers in `failed` (dropped from a recent fetch as unreachable) are left out while any other remains."""
    rng = rng or random.Random()
    peers = list(dict.fromkeys(announced))
    if any(p not in failed for p in peers):
        peers = [p for p in peers if p not in failed]
    served = sorted((p for p in peers if p in good), key=lambda p: -good[p])
    alive = [p for p in peers if p in live and p not in good]
    rest = [p for p in peers if p not in live and p not in good]
    rng.shuffle(alive)
    rng.shuffle(rest)
    return (served + alive + rest)[:limit]


class _Served:
    """The store as the chunk server sees it, counting what it sends."""

    _lock = threading.Lock()  # reads run in worker threads

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def read(self, cid: str, verify_bytes: bool = False) -> bytes:
        data = self.store.read(cid, verify_bytes=verify_bytes)
        self.count(len(data))
        return data

    def locate(self, cid: str) -> tuple[Path, int, int] | None:
        return self.store.locate(cid)

    def count(self, n: int) -> None:
        with self._lock:
            self.store.served_bytes += n


class ContentStore:
    """The content-addressed store of one node. `start()` before use, `close()` at exit.

    `limit_bytes`: garbage collection keeps the store under this size (pinned data is never collected); a
    download that cannot fit under it, after evicting unpinned content, is refused before its first chunk.
    `provide_ttl`: lifetime of our provider records; they are renewed every third of it while pinned (or lent:
    `lend`, never past the lending's end).
    `free_space()`: free bytes on the store's disk (injectable for tests); a download needs its size plus
    `disk_margin` free.
    """

    def __init__(self, node: SwarmNode, root: Path | str, *, limit_bytes: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, provide_ttl: float = 600.0, streams_per_peer: int = 2,
                 failure_budget: int = 3, request_timeout: float = 60.0,
                 free_space: Callable[[], int] | None = None, disk_margin: int = 64 << 20,
                 max_providers: int = 32):
        self.node = node
        self.root = Path(root)
        self.free_space = free_space or (lambda: shutil.disk_usage(self.root).free)
        self.disk_margin = disk_margin
        self.max_providers = max_providers
        self._good: dict[str, float] = {}  # peer → when it last served us correctly
        self._failed: dict[str, float] = {}  # peer → when a fetch last dropped it without a chunk from it
        self.blobs = BlobStore(root, limit_bytes)
        self.packs = PackStore(root)
        self.limit_bytes = limit_bytes
        self.chunk_size = chunk_size
        self.provide_ttl = provide_ttl
        self.streams_per_peer, self.failure_budget, self.request_timeout = (
            streams_per_peer, failure_budget, request_timeout)
        self._p2p: P2P | None = None
        self._provider_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._in_flight: Counter[str] = Counter()  # CID → gets running that hold it (kept from garbage collection)
        self._downloads: dict[str, tuple[asyncio.Lock, int]] = {}  # CID → its download's lock, gets waiting on it
        self._lent: dict[str, float] = {}  # root CID → until when (monotonic) we provide it without a pin
        self._known_maddrs: dict[str, tuple[str, ...]] = {}
        self.last_fetch: FetchStats | None = None
        self.served_bytes = 0  # chunk and manifest bytes sent to peers (for metrics)
        self.fetched_bytes = 0  # chunk bytes received from peers

    async def start(self) -> None:
        self._p2p = await self.node.dht.replicate_p2p()

        self.reindex()

        async def handler(_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve_chunks(_Served(self), reader, writer)

        await self._p2p.add_binary_stream_handler(PROTOCOL_NAME, handler)
        self._provider_task = asyncio.create_task(self._reprovide_loop())

    def reindex(self) -> None:
        """Make the chunks of complete packs on disk servable (after a restart)."""
        for root in self.packs.roots():
            try:
                self.packs.index(root, self.blobs.manifest(root))
            except (KeyError, IntegrityError):
                log.warning("pack %s has no valid manifest; unpin and gc will remove it", root)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for the provider records of what `get` fetched (they are announced in the background); past
        `timeout`, the ones still running are cancelled."""
        if self._background:
            _, late = await asyncio.wait(set(self._background), timeout=timeout)
            for t in late:
                t.cancel()

    async def close(self) -> None:
        await self.flush(timeout=5.0)  # a few seconds for what we just fetched to be announced, then stop
        if self._provider_task is not None:
            self._provider_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._provider_task
        if self._p2p is not None:
            with contextlib.suppress(Exception):
                await self._p2p.remove_binary_stream_handler(PROTOCOL_NAME)

    # ---- put ----

    async def put(self, path: Path | str, *, pin: bool = True, provide: bool = True) -> str:
        """Chunk a file or directory into the store; return its root CID (a CIDv1 of the manifest)."""
        manifest = await asyncio.to_thread(import_path, self.blobs, Path(path), self.chunk_size)
        if pin:
            self.blobs.pin(manifest.cid)
        if provide:
            await self.provide(manifest.cid, manifest.total_bytes)
        return manifest.cid

    # ---- get ----

    async def get(self, cid: str, out_dir: Path | str | None = None, *, providers: list[str] | None = None,
                  pin: bool = True, provide: bool = True, expected_bytes: int | None = None,
                  max_bytes: int | None = None, on_progress: Callable[[int, int], None] | None = None,
                  files: tuple[str, ...] | None = None, last_resort: frozenset[str] = frozenset()) -> Path:
        """Fetch `cid` (from `providers`, or those the DHT lists), verifying every chunk, and return the path
        of its file or directory: inside the store (read-only by convention), or a copy in `out_dir`.
        Before the first chunk is written, the manifest's size must equal `expected_bytes` and stay within
        `max_bytes` (what the caller knows to expect, not what a peer says), and fit on the disk and under
        the store's limit. An interrupted download resumes from the chunks already written.
        `on_progress(done, total)` reports verified bytes about twice a second while chunks arrive.
        `files`: only these files of a directory (CasManifest.part), from the whole's providers; the sizes
        above are still the whole's. The part is kept under its own CID, which we do not announce.
        `last_resort`: providers asked only when the others cannot serve it all (a checkpoint's trainer, so that
        its later verifiers fetch from its earlier ones and the trainer uploads it about once)."""
        keep = [cid]  # protected from garbage collection while the download runs
        self._in_flight.update(keep)
        try:
            if providers is None and not (self.blobs.has(cid) and self.packs.complete(cid)):
                providers = await self.find_providers(cid)  # once, for the manifest and the chunks
            manifest = await self._manifest(cid, providers, last_resort)
            size = manifest.total_bytes
            if expected_bytes is not None and size != expected_bytes:
                raise IntegrityError(f"{cid} holds {size} bytes, {expected_bytes} were announced")
            if max_bytes is not None and size > max_bytes:
                raise IntegrityError(f"{cid} would write {size} bytes, more than the {max_bytes} it can be")
            root, whole = cid, manifest
            if files is not None and not self.packs.complete(cid):
                manifest = manifest.part(files)
                cid = manifest.cid
                keep.append(cid)
                self._in_flight[cid] += 1
                self.blobs.write(cid, manifest.to_bytes())  # so that the part is indexed like any pack
            elif files is not None:
                manifest.part(files)  # the whole is here: it holds the files asked for, or this says not
            if not self.packs.complete(cid):
                async with self._one_download(cid):  # a get of the same CID already under way: wait for it
                    if not self.packs.complete(cid):
                        self._make_room(cid, manifest.total_bytes)
                        await self._fetch_pack(cid, manifest, providers, on_progress, root=root,
                                               last_resort=last_resort)
            if on_progress:
                unique = sum(manifest.unique_chunks().values())
                on_progress(unique, unique)
            path = self.packs.path(cid) / manifest.name
            if pin:
                self.blobs.pin(cid)
            if out_dir is not None:
                path = await asyncio.to_thread(copy_out, path, Path(out_dir))
        finally:
            self._in_flight.subtract(keep)
            self._in_flight = +self._in_flight  # drop the CIDs no get holds any more
        if provide and cid == root:  # in the background: the caller has its bytes, and a slow DHT write must not
            self._spawn(self.provide(cid, whole.total_bytes))  # hold it up
        return path

    @contextlib.asynccontextmanager
    async def _one_download(self, cid: str):
        """One download of `cid` at a time in this store: two would write into the same partial pack, and the
        rename that completes one would pull the files from under the other."""
        lock, users = self._downloads.get(cid, (asyncio.Lock(), 0))
        self._downloads[cid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._downloads[cid]
            if users == 1:
                del self._downloads[cid]
            else:
                self._downloads[cid] = (lock, users - 1)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None
                               or log.warning("announcing a provider record failed: %r", t.exception()))

    def _make_room(self, cid: str, size: int) -> None:
        """Refuse a download that cannot fit (the disk, the store's limit after evicting unpinned content)."""
        if self.limit_bytes is not None and self.total_bytes() + size > self.limit_bytes:
            self.gc(max(self.limit_bytes - size, 0))
            if self.total_bytes() + size > self.limit_bytes:
                raise ParisError(f"{cid} ({size} bytes) does not fit under the store's limit of {self.limit_bytes} "
                                 f"bytes (pinned content: {self.total_bytes()} bytes); raise --cache-gb")
        free = self.free_space()
        if free < size + self.disk_margin:
            raise ParisError(f"not enough free disk for {cid}: it needs {size} bytes (+{self.disk_margin} spare), "
                             f"{free} are free in {self.root}")

    async def _fetch_pack(self, cid: str, manifest: CasManifest, providers: list[str] | None,
                          on_progress: Callable[[int, int], None] | None = None, *, root: str | None = None,
                          last_resort: frozenset[str] = frozenset()) -> None:
        """Download `manifest`'s chunks into the pack `cid`; providers are those of `root` (a part's whole)."""
        writer = await asyncio.to_thread(PackWriter, self.packs, cid, manifest)
        chunks = manifest.unique_chunks()
        reporter = asyncio.create_task(_report(writer, chunks, on_progress)) if on_progress else None
        try:
            await self._fill_pack(writer, root or cid, chunks, providers, last_resort)
        finally:
            if reporter is not None:
                reporter.cancel()
        await asyncio.to_thread(writer.finish)

    async def _fill_pack(self, writer: PackWriter, cid: str, chunks: dict[str, int],
                         providers: list[str] | None, last_resort: frozenset[str] = frozenset()) -> None:
        local = [c for c in chunks if not writer.has(c) and self.blobs.has(c)]  # e.g. our own put

        def copy_local() -> None:
            for c in local:
                with contextlib.suppress(KeyError):
                    writer.write(c, self.blobs.read(c))

        await asyncio.to_thread(copy_local)
        if any(not writer.has(c) for c in chunks):
            peers = providers if providers is not None else await self.find_providers(cid)
            peers = [p for p in peers if p != self.node.peer_id]
            if not peers:
                raise FetchError(f"no providers of {cid} are known")
            rounds = _rounds(peers, last_resort)
            for i, group in enumerate(rounds):  # the last round asks everyone for what is still missing
                try:
                    self.last_fetch = await fetch_chunks(
                        writer, chunks, group, self._open_stream, streams_per_peer=self.streams_per_peer,
                        failure_budget=self.failure_budget, timeout=self.request_timeout)
                except FetchError:  # the chunks stored so far stay: the next round fetches only the rest
                    if i == len(rounds) - 1:
                        raise
                    log.info("%s: %d provider(s) could not serve it all; asking the rest too", cid, len(group))
                    continue
                self._note(self.last_fetch)
                break

    def _note(self, stats: FetchStats) -> None:
        """Remember who served a fetch (asked first next time) and who failed it (passed over for a while)."""
        self.fetched_bytes += stats.fetched_bytes
        for peer, st in stats.peers.items():
            if st.chunks:
                self._good[peer] = time.monotonic()
                self._failed.pop(peer, None)
            elif st.banned:  # unreachable or silent: not asked again for a while (rank_providers)
                self._failed[peer] = time.monotonic()
                self._good.pop(peer, None)

    async def _manifest(self, cid: str, providers: list[str] | None,
                        last_resort: frozenset[str] = frozenset()) -> CasManifest:
        if self.blobs.has(cid):
            return self.blobs.manifest(cid)
        peers = providers if providers is not None else await self.find_providers(cid)
        peers = [p for p in peers if p != self.node.peer_id]
        served_by: list[str] = []
        rounds = _rounds(peers, last_resort)
        for i, group in enumerate(rounds):
            try:
                data = await fetch_blob(self._open_stream, group, cid, timeout=min(self.request_timeout, 10.0),
                                        served_by=served_by)
                break
            except FetchError:
                if i == len(rounds) - 1:
                    raise
        for peer in served_by:
            self._good[peer] = time.monotonic()
        manifest = decode_manifest(cid, data)
        self.blobs.write(cid, data)
        return manifest

    # ---- serving and providers ----

    async def _open_stream(self, peer: str) -> Streams:
        assert self._p2p is not None, "ContentStore.start() was not called"
        peer_id = PeerID.from_base58(peer)
        try:
            _, reader, writer = await self._p2p.call_binary_stream_handler(peer_id, PROTOCOL_NAME)
        except Exception:
            maddrs = self._known_maddrs.get(peer, ())
            if not maddrs:
                raise
            await self._p2p._client.connect(peer_id, [Multiaddr(m) for m in maddrs])
            _, reader, writer = await self._p2p.call_binary_stream_handler(peer_id, PROTOCOL_NAME)
        return reader, writer

    async def find_providers(self, cid: str) -> list[str]:
        """Who announces `cid`, in the order to ask them (rank_providers), at most `max_providers`."""
        found = await self.node.get(provider_key(cid))
        bodies = [r.body for r in found.records if isinstance(r.body, ProviderBody)]
        for b in bodies:
            self._known_maddrs[b.peer_id] = b.maddrs
        live = await self._live_peers() if bodies else set()
        now = time.monotonic()
        failed = {p for p, t in self._failed.items() if now - t < FAILED_FOR_S}
        return rank_providers([b.peer_id for b in bodies], good=self._good, live=live, limit=self.max_providers,
                              failed=failed)

    async def _live_peers(self) -> set[str]:
        """Peers that are real running processes as far as we can tell: connected to our p2p daemon now, or
        in our DHT routing table (they answered DHT requests). A provider record costs a key; this costs a
        running node."""
        live: set[str] = set()
        with contextlib.suppress(Exception):
            live |= {p.peer_id.to_base58() for p in await self._p2p.list_peers()}
        with contextlib.suppress(Exception):
            live |= set(await self.node.routing_peers())
        return live

    async def provide(self, cid: str, size: int | None = None, ttl: float | None = None) -> bool:
        """Announce that this node serves `cid` for `ttl` seconds (default `provide_ttl`; renewed while it stays
        pinned, or lent)."""
        if size is None:
            size = self.blobs.manifest(cid).total_bytes
        now = get_dht_time()
        body = ProviderBody(cid=cid, peer_id=self.node.peer_id, maddrs=tuple(self.node.visible_maddrs()[:16]),
                            bytes=size, ts=now)
        return await self.node.put(provider_key(cid), body, now + (self.provide_ttl if ttl is None else ttl))

    def lend(self, cid: str, seconds: float) -> bool:
        """Provide `cid`, which we hold complete without pinning it (fetched and checked), for `seconds`: announced
        now (in the background) and renewed like a pin, but never past that time nor after garbage collection
        evicted it to make room (a lent pack goes after other unpinned ones; a gc with no limit keeps it). False
        (and nothing announced) if we do not hold it complete."""
        if seconds <= 0 or not self.packs.complete(cid) or not self.blobs.has(cid):
            return False
        self._lent[cid] = max(self._lent.get(cid, 0.0), time.monotonic() + seconds)
        self._spawn(self._provide_lent(cid))
        return True

    def withdraw(self, cid: str) -> None:
        """Stop providing `cid` (it was rejected) and drop its bytes unless they are pinned or being fetched: a
        provider record already written expires with its (lent) TTL, and asking us finds nothing."""
        self._lent.pop(cid, None)
        if cid not in self.blobs.pins() and cid not in self._in_flight:
            self.packs.remove(cid)

    def lent(self) -> dict[str, float]:
        """The CIDs we provide without a pin, and the seconds left to each (expired or evicted ones forgotten)."""
        now = time.monotonic()
        self._lent = {c: t for c, t in self._lent.items() if t > now and self.packs.complete(c)}
        return {c: t - now for c, t in self._lent.items()}

    async def _provide_lent(self, cid: str) -> None:
        left = self.lent().get(cid)
        if left is not None and cid not in self.blobs.pins():  # withdrawn meanwhile: nothing announced
            await self.provide(cid, ttl=min(self.provide_ttl, left))

    async def _reprovide_loop(self) -> None:
        while True:
            await asyncio.sleep(self.provide_ttl / 3)
            pins = self.blobs.pins()
            for cid in [*pins, *(c for c in self.lent() if c not in pins)]:
                try:
                    if cid not in pins:
                        await self._provide_lent(cid)
                    elif self.blobs.has(cid):
                        await self.provide(cid)
                except Exception:  # one bad pin must not stop announcing the others
                    log.exception("re-announcing %s failed", cid)

    # ---- local management ----

    def pin(self, cid: str) -> None:
        self.blobs.pin(cid)

    def unpin(self, cid: str) -> None:
        self.blobs.unpin(cid)

    def locate(self, cid: str) -> tuple[Path, int, int] | None:
        """Where the bytes of a chunk or manifest we can serve lie: (file, offset, size), or None. What the
        chunk server sends from the page cache (sendfile) without reading it into Python."""
        path = self.blobs.path(cid)
        with contextlib.suppress(OSError):
            return path, 0, path.stat().st_size
        return self.packs.locate(cid)

    def read(self, cid: str, verify_bytes: bool = False) -> bytes:
        """A chunk or manifest we can serve, from the blob store or a complete pack; KeyError if neither."""
        try:
            return self.blobs.read(cid, verify_bytes=verify_bytes)
        except KeyError:
            return self.packs.read(cid)

    def total_bytes(self) -> int:
        return self.blobs.total_bytes() + sum(self.packs.size(r) for r in self.packs.roots())

    def gc(self, limit_bytes: int | None = None) -> int:
        """Free space down to `limit_bytes` (default: the store's limit; None: everything unpinned and not lent):
        unpinned packs first, oldest first, lent ones last, then unpinned blobs. Pinned data and downloads in
        flight stay."""
        limit = self.limit_bytes if limit_bytes is None else limit_bytes
        pins = self.blobs.pins()
        lent = set(self.lent())
        freed = 0
        packs = sorted((r in lent, self.packs.path(r).stat().st_mtime, r) for r in self.packs.roots())
        total = self.total_bytes()
        for is_lent, _, root in packs:
            if limit is not None and total - freed <= limit:
                break
            if root in pins or root in self._in_flight or (is_lent and limit is None):
                continue
            size = self.packs.size(root)
            self.packs.remove(root)
            freed += size
        pack_bytes = sum(self.packs.size(r) for r in self.packs.roots())
        blob_limit = None if limit is None else max(0, limit - pack_bytes)
        return freed + self.blobs.gc(blob_limit, keep=set(self._in_flight) | set(self.lent()))  # lent manifests stay


def _rounds(peers: list[str], last_resort: frozenset[str]) -> list[list[str]]:
    """The provider groups a fetch asks in turn: those not in `last_resort` first, then everyone (in their order)."""
    first = [p for p in peers if p not in last_resort]
    return [first, peers] if first and len(first) < len(peers) else [peers]


async def _report(writer: PackWriter, chunks: dict[str, int], on_progress: Callable[[int, int], None]) -> None:
    """Verified bytes so far (chunks that are in the pack), every half second until cancelled."""
    total = sum(chunks.values())
    while True:
        on_progress(sum(size for c, size in chunks.items() if writer.has(c)), total)
        await asyncio.sleep(0.5)
