"""The roles' decisions against a fake NodeContext, in milliseconds and without a network: which role a lane
plays, when the router is claimed, what a seed round holds, where a trainer resumes from, the member book, and
`join`'s one config object. The roles take a context, never the daemon, so a fake one is all they need."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from node.join_config import JoinConfig
from node.lane import Lane
from node.members import MemberBook
from protocol.errors import ParisError
from protocol.swarm_records import ClusterState, MemberBody
from swarm.dht import DHTReadError
from tests.test_node_units import PEER_A, PEER_B, _cid, _ck, _view


class FakeContext:
    """What a role reads from a NodeContext: a fixed view of the run, and recorders instead of the network."""

    def __init__(self, view, tmp: Path, *, role: str = "auto", stop_when_done: bool = False, finished=False,
                 period: float = 0.01) -> None:
        self.view, self.home = view, tmp
        self.opts = SimpleNamespace(role=role, stop_when_done=stop_when_done, efficiency=None)
        self.stopping = asyncio.Event()
        self.period = period
        self.finished = finished
        self.spec = SimpleNamespace(run_id="run-x", num_clusters=view.num_clusters, creator=None, seed=0)
        self.schedule = SimpleNamespace(router_target_steps=100, router_cap=64)
        self.fetched: list[str] = []
        self.replicated: list[str] = []
        self.said: list = []
        self.store = SimpleNamespace(get=self._get)
        self.run = SimpleNamespace(spec=self.spec, bundle_cid="bundle", manifest=SimpleNamespace(clusters=[
            SimpleNamespace(cid=f"data-{k}", bytes=1, holdout_cid=f"held-{k}", holdout_bytes=1)
            for k in range(view.num_clusters)]))
        self.node = SimpleNamespace(get=self._dht_get, peer_id=PEER_A)
        self.publisher = SimpleNamespace(replicate=self._replicate, published={}, pinned=[],
                                         replace_pin=lambda slot, cid, step: self.publisher.pinned.append(cid))

    async def _get(self, cid, **kw):
        self.fetched.append(cid)
        return self.home / cid

    async def _dht_get(self, key):
        return SimpleNamespace(records=[])

    async def _replicate(self, slot, candidates, limit=None):
        self.replicated.append(slot)

    async def read_view(self, *, fresh: bool = False):
        return self.view

    async def run_finished(self) -> bool:
        return self.finished

    async def unless_stopped(self, coro):
        return await coro

    async def say(self, ev) -> None:
        self.said.append(ev)

    def checkpoint_root(self, slot: str) -> Path:
        return self.home / "checkpoints" / slot


def _lane(ctx, index: int = 0) -> tuple[Lane, list[str]]:
    roles: list[str] = []
    return Lane(ctx, index, "cpu", on_role=lambda lane: roles.append(lane.role)), roles


# ---- which role a lane plays ----


def test_a_permissioned_outsider_verifies_in_auto_and_may_not_ask_to_train():
    from node.role_loop import effective_role, seed_role

    assert effective_role("auto", True) == "auto" and effective_role("auto", False) == "verifier"
    assert effective_role("seeder", False) == "seeder"
    with pytest.raises(ParisError, match=f"--role expert: this run is permissioned and {PEER_A} is not"):
        effective_role("expert", False, PEER_A)
    assert [seed_role(r) for r in ("auto", "verifier", "seeder")] == ["verifier", "verifier", "seeder"]


def test_a_seeder_lane_seeds_each_period_until_stopped(tmp_path):
    from node.role_loop import lane_loop

    ctx = FakeContext(_view([]), tmp_path, role="seeder")
    lane, roles = _lane(ctx)
    rounds = []

    class Seeder:
        all_clusters_done = False

        async def round(self):
            rounds.append(1)
            if len(rounds) == 3:
                ctx.stopping.set()

    asyncio.run(asyncio.wait_for(lane_loop(ctx, lane, "seeder", Seeder(), asyncio.Event()), 5))
    assert len(rounds) == 3 and roles == ["seeder"]  # the role is said once, not every round


def test_a_finished_run_stops_a_node_that_asked_to_stop_when_done(tmp_path):
    from node.role_loop import lane_loop

    ctx = FakeContext(_view([]), tmp_path, role="verifier", stop_when_done=True, finished=True)
    lane, roles = _lane(ctx)
    seeder = SimpleNamespace(round=None)  # never reached: the run is finished
    asyncio.run(asyncio.wait_for(lane_loop(ctx, lane, "verifier", seeder, asyncio.Event()), 5))
    assert ctx.stopping.is_set() and roles == []


def test_a_further_lane_with_nothing_to_train_idles_and_never_seeds(tmp_path):
    from node.role_loop import lane_loop

    ctx = FakeContext(_view([]), tmp_path, role="seeder", period=0.01)
    lane, roles = _lane(ctx, index=1)

    async def go():
        task = asyncio.create_task(lane_loop(ctx, lane, "seeder", SimpleNamespace(round=None), asyncio.Event()))
        await asyncio.sleep(0.05)
        ctx.stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert roles == ["idle"]


# ---- the router ----


def test_the_router_is_not_claimed_once_a_checkpoint_is_at_its_target(tmp_path):
    from node.role_router import maybe_run_router, router_wanted

    assert router_wanted(None, 100) and router_wanted(99, 100) and not router_wanted(100, 100)
    ctx = FakeContext(_view([(PEER_A, _ck("router", 100, _cid(0)))]), tmp_path)
    lane, roles = _lane(ctx)
    lane.claims = lambda *a, **k: pytest.fail("claimed the router's lease with the router at its target")
    assert asyncio.run(maybe_run_router(ctx, lane, wait=False)) is False and roles == []


def test_the_router_is_not_decided_on_a_failed_read(tmp_path):
    from node.role_router import maybe_run_router

    ctx = FakeContext(replace(_view([]), failed=("timeout",)), tmp_path)
    lane, _ = _lane(ctx)
    lane.claims = lambda *a, **k: pytest.fail("claimed on a failed read")
    with pytest.raises(DHTReadError):
        asyncio.run(maybe_run_router(ctx, lane, wait=False))


# ---- the seeder ----


def test_a_seed_round_holds_the_data_every_accepted_slot_and_says_when_all_is_done(tmp_path, monkeypatch):
    from node import role_seeder

    monkeypatch.setattr(role_seeder, "checkpoint_limit", lambda run, slot: 1 << 20)
    view = replace(_view([(PEER_A, _ck("expert-0", 50, _cid(1)))]), states=(ClusterState.DONE, ClusterState.DONE))
    ctx = FakeContext(view, tmp_path)
    seeder = role_seeder.Seeder(ctx)
    asyncio.run(seeder.round())
    assert ctx.fetched == ["bundle", "data-0", "held-0", "data-1", "held-1"]
    assert ctx.replicated == ["expert-0", "expert-1", "router"]
    assert seeder.all_clusters_done
    assert not (tmp_path / "archive").exists()  # nothing in the archive keys: no ledger written


def test_each_key_is_archived_by_a_few_seeders_whatever_their_number():
    from node.role_seeder import archive_share

    keys = [f"paris/run-x/checkpoints/expert-{k}/e0" for k in range(40)]
    peers = ["Qm" + chr(65 + i) * 44 for i in range(30)]
    members = {p: SimpleNamespace(role="auto") for p in peers} | {"QmObserver": SimpleNamespace(role="observer")}
    shares = {p: set(archive_share(keys, "run-x", p, members)) for p in peers}
    for key in keys:  # three archivers per key, the same ones in every member's view (never the observer)
        assert sum(key in got for got in shares.values()) == 3
    assert sum(len(got) for got in shares.values()) == 3 * len(keys)
    assert archive_share(keys, "run-x", peers[0], {}) == keys  # alone (or blind): it keeps everything


# ---- where a trainer starts ----


class FakeTrainer:
    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def load(self, path):
        self.loaded.append(Path(path))
        return SimpleNamespace(step=int(Path(path).name.split("-")[-1]) if "-" in Path(path).name else 0)


def test_a_takeover_skips_what_fails_our_own_check_and_takes_the_next_accepted(tmp_path, monkeypatch):
    from node import takeover

    monkeypatch.setattr(takeover, "checkpoint_limit", lambda run, slot: 1 << 20)
    first, second = _ck("expert-0", 50, _cid(1)), _ck("expert-0", 100, _cid(2), parent=_cid(1))
    ctx = FakeContext(_view([(PEER_A, first), (PEER_B, second)]), tmp_path)
    checked = []

    async def check(body, parents):
        checked.append(body.step)
        return SimpleNamespace(ok=body.step != 100, reason="validation loss differs", val_loss=0.5)

    async def get(cid, **kw):
        return tmp_path / f"ck-{50 if cid == _cid(1) else 100}"

    ctx.checker = SimpleNamespace(check=check)
    ctx.store = SimpleNamespace(get=get)
    trainer = FakeTrainer()
    asyncio.run(takeover.resume(ctx, trainer, "expert-0"))
    assert checked == [100, 50] and trainer.loaded == [tmp_path / "ck-50"]  # newest first; the refused one skipped
    assert ctx.publisher.published["expert-0"] == (_cid(1), 50) and ctx.publisher.pinned == [_cid(1)]


def test_a_takeover_is_never_decided_on_a_failed_read(tmp_path):
    from node import takeover

    ctx = FakeContext(replace(_view([]), failed=("oversize reply",)), tmp_path)
    with pytest.raises(DHTReadError):
        asyncio.run(takeover.resume(ctx, FakeTrainer(), "expert-0"))


# ---- the member book ----


def _member(ts: float, port: int, peer: str = PEER_A) -> MemberBody:
    return MemberBody(protocol=1, software="paris-node", peer_id=peer, ts=ts,
                      maddrs=(f"/ip4/127.0.0.1/tcp/{port}",))


def test_the_member_book_keeps_the_newest_addresses_past_expiry():
    book = MemberBook(keep=2)
    c = "QmC" + PEER_A[3:]
    book.note(SimpleNamespace(members={PEER_A: _member(1.0, 1), PEER_B: _member(2.0, 2, PEER_B)}))
    book.note(SimpleNamespace(members={c: _member(3.0, 3, c)}))  # A and B expired; the book still knows B
    assert book.seen == 1 and set(book.addrs) == {PEER_B, c}
    got = book.dial_list([f"/ip4/10.0.0.1/tcp/9/p2p/{PEER_A}"])
    assert got[PEER_A] == ("/ip4/10.0.0.1/tcp/9",) and got[c] == ("/ip4/127.0.0.1/tcp/3",)


# ---- one config object ----


def _join(**kw) -> dict:
    base = dict(home=Path("/tmp/h"), gpu="cpu", ddp=False, initial_peers=None, initial_peers_file=None, run=None,
                role="auto", host="127.0.0.1", port=0, gossip_port=None, announce_host=None, nat=False, relay=False,
                behind_nat=False, data=None, clusters=3, preset="small", target_steps=10, clips=64, router_steps=5,
                checkpoint_every=None, checkpoint_minutes=10.0, attestations=1, replay_every=10,
                progress_intervals=3, allow_trainer=None, loss_tolerance=0.1, period=10.0, record_days=14.0,
                no_gossip=False, cache_gb=1.0, stop_when_done=False, cpu_threads=None, duty_cycle=1.0, compile=False,
                grad_checkpointing="auto", metrics_port=None, metrics_host="127.0.0.1", tensorboard=None,
                log_format="text", log_level="info", print_config=False)
    return base | kw


def test_join_options_become_the_daemon_options_in_one_step():
    opts = JoinConfig.of(_join(port=4000, record_days=1.0, cache_gb=2.0, allow_trainer=[PEER_A])).daemon_options([])
    assert opts.gossip_port == 4001 and opts.record_ttl == 86400.0 and opts.cache_bytes == 2 * 2**30
    assert opts.trainers == (PEER_A,) and opts.checkpoint_every_from_preset and opts.creates_run
    assert JoinConfig.of(_join(gossip_port=5)).daemon_options([]).gossip_port == 5


@pytest.mark.parametrize("kw, message", [
    ({"role": "boss"}, "--role 'boss': Input should be"),
    ({"preset": "tiny-latent"}, "--preset 'tiny-latent': trains through a VAE"),
    ({"allow_trainer": ["QmA"]}, "--allow-trainer: 'QmA' is not a peer id"),
    ({"announce_host": "1.2.3.4"}, "--announce-host needs a fixed gossip port"),
    ({"log_level": "loud"}, "--log-level 'loud'"),
    ({"surprise": 1}, "--surprise"),
])
def test_bad_join_options_are_one_line_errors(kw, message):
    with pytest.raises(ParisError, match=message):
        JoinConfig.of(_join(**kw))


def test_behind_nat_needs_peers():
    with pytest.raises(ParisError, match="--behind-nat needs --initial-peers"):
        JoinConfig.of(_join(behind_nat=True)).daemon_options([])
