"""Fast unit tests of the daemon's pieces that need no network: node.json, checkpoint candidates, the fetch
plan, the dashboard, the run bundle's verification, logging and the network flags."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from rich.console import Console

from node.bundle import ForeignBundleError, _verify_bundle, split_by_cluster, write_bundle
from node.dashboard import render, sparkline
from node.fetch import plan
from node.logs import JsonFormatter, TextFormatter
from node.nodefile import NodeInfo, peers_from_file, read_node_info, remove_node_info, write_node_info
from node.swarm_view import LossHistory, SlotRow, SwarmStatus, _overall, eta_seconds, run_eta
from protocol.canonical import canonical_json
from protocol.errors import IntegrityError, ParisError
from protocol.swarm_records import AttestationBody, CheckpointBody, ClaimState, ClusterState
from protocol.swarm_run import SWARM_FILE, ClusterData, SwarmRunManifest
from swarm.acceptance import Policy
from swarm.state import RunRules, RunView

PEER_A = "QmS68mngh9LRAR6ooCHVELGZL6p67DtHRrxsBtDfV4f7GX"
PEER_B = "QmWX2GnKGWdZWgjeAkzzZyF6MVrJtgGKoBZxNZsxP2jDTZ"
CID = "bagaaiera" + "a" * 50


def _cid(i: int) -> str:
    return "bagaaiera" + "abcdefghijklmnop"[i] * 50


def _ck(slot: str, step: int, cid: str, *, replica: bool = False, ts: float = 100.0, parent: str | None = None,
        val_loss: float | None = 0.5) -> CheckpointBody:
    return CheckpointBody(slot=slot, step=step, cid=cid, bytes=10, replica=replica, ts=ts, parent=parent,
                          val_loss=val_loss)


def _view(checkpoints, k: int = 2, *, attestations=(), q: int = 0) -> RunView:
    rules = RunRules(Policy(attestations=q, max_interval=100), expert_target=100, router_target=100)
    return RunView(run_id="run-x", num_clusters=k, specs=(), members={}, foreign=(), claims={}, progress={},
                   checkpoints=tuple(checkpoints), done=(), states=tuple([ClusterState.FREE] * k), owners={},
                   attestations=tuple(attestations), rules=rules)


# ---- node.json ----


def test_node_file_round_trip_and_peers(tmp_path):
    info = NodeInfo(peer_id=PEER_A, maddrs=(f"/ip4/127.0.0.1/tcp/5/p2p/{PEER_A}",), pid=os.getpid(),
                    started_at=1.0, run_id="run-x")
    path = write_node_info(tmp_path, info)
    assert read_node_info(tmp_path) == info and read_node_info(path) == info
    assert peers_from_file(tmp_path) == list(info.maddrs) == peers_from_file(path)
    remove_node_info(tmp_path)
    assert not path.exists()


def test_node_file_of_another_process_is_left_alone(tmp_path):
    write_node_info(tmp_path, NodeInfo(peer_id=PEER_A, maddrs=("/ip4/1.2.3.4/tcp/1",), pid=1, started_at=1.0))
    remove_node_info(tmp_path)
    assert (tmp_path / "node.json").exists()


def test_missing_or_broken_node_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParisError, match="no node file"):
        peers_from_file(tmp_path / "nope.json", timeout=0.2)
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="node file"):
        peers_from_file(tmp_path)


# ---- checkpoints announced by trainers and seeders ----


def test_candidates_newest_first_with_replicas_deduplicated():
    view = _view([(PEER_A, _ck("expert-0", 20, _cid(1))), (PEER_B, _ck("expert-0", 10, _cid(0), replica=True)),
                  (PEER_A, _ck("expert-1", 5, _cid(2))), (PEER_B, _ck("expert-0", 20, _cid(1), replica=True))])
    cands = view.checkpoint_candidates("expert-0")
    assert [c.step for c in cands] == [20, 10]
    assert not cands[0].replica  # the trainer's own record wins over a seeder's copy of the same CID
    assert view.latest_checkpoint("expert-0").cid == _cid(1)
    assert view.trainers("expert-0") == [PEER_A]  # the seeder is not credited as a trainer
    assert view.latest_checkpoint("router") is None


def test_fetch_plan_names_missing_parts():
    full = _view([(PEER_A, _ck("expert-0", 9, _cid(0))), (PEER_A, _ck("expert-1", 9, _cid(1))),
                  (PEER_B, _ck("router", 3, _cid(2)))])
    assert set(plan(full, 2, allow_partial=False)) == {"expert-0", "expert-1", "router"}
    partial = _view([(PEER_A, _ck("expert-1", 9, _cid(1))), (PEER_B, _ck("router", 3, _cid(2)))])
    with pytest.raises(ParisError, match=r"missing expert 0.*--allow-partial"):
        plan(partial, 2, allow_partial=False)
    assert set(plan(partial, 2, allow_partial=True)) == {"expert-1", "router"}
    with pytest.raises(ParisError, match="no router checkpoint"):
        plan(_view([(PEER_A, _ck("expert-0", 9, _cid(0)))]), 2, allow_partial=True)


def test_fetch_plan_takes_only_accepted_checkpoints():
    honest = _ck("expert-0", 9, _cid(0))
    poison = _ck("expert-0", 10**6, _cid(3))  # a random-weight checkpoint at a huge step: no lineage
    reannounced = _ck("expert-0", 10**6, _cid(0), parent=None)  # an honest CID re-announced at a huge step
    lossless = _ck("expert-0", 50, _cid(4), parent=_cid(0), val_loss=None)
    view = _view([(PEER_A, honest), (PEER_B, poison), (PEER_B, reannounced), (PEER_B, lossless),
                  (PEER_A, _ck("expert-1", 9, _cid(1))), (PEER_A, _ck("router", 3, _cid(2)))])
    assert [c.step for c in plan(view, 2, allow_partial=False)["expert-0"]] == [9]
    rejected = {j.claim.step: j.reason for j in view.judged("expert-0") if not j.accepted}
    assert "not 1..100 steps past" in rejected[10**6] and "validation loss" in rejected[50]
    # with a quorum of one, an unattested checkpoint is not fetched, and the error says why
    with pytest.raises(ParisError, match=r"expert 0: newest claim \(step 1000000\) is rejected"):
        plan(_view([(PEER_A, honest), (PEER_B, poison), (PEER_A, _ck("router", 3, _cid(2)))], q=1), 2,
             allow_partial=False)


# ---- dashboard ----


def test_dashboard_shows_every_slot_and_progress():
    slots = [SlotRow(slot="expert-0", cluster=0, state="done", owner=PEER_A, step=100, target=100,
                     checkpoint_cid=_cid(0), checkpoint_step=100, checkpoint_age_s=30, providers=2),
             SlotRow(slot="expert-1", cluster=1, state="training", owner=PEER_B, step=25, target=100, loss=0.5,
                     samples_per_s=12.5),
             SlotRow(slot="router", cluster=None, state="free", target=50)]
    st = SwarmStatus(run_id="run-abc", num_clusters=2, progress=_overall(slots), peers=[], slots=slots, at=0.0)
    assert st.progress == pytest.approx((1 + 0.25 + 0) / 3, abs=1e-4)
    buf = io.StringIO()
    Console(file=buf, width=140, color_system=None).print(render(st))
    text = buf.getvalue()
    for word in ("run-abc", "expert-0", "expert-1", "router", "done", "training", "25/100", "12.5", "0.5000"):
        assert word in text, text
    assert json.loads(st.model_dump_json())["slots"][1]["step"] == 25


def test_eta_per_slot_and_for_the_run_and_the_loss_sparkline():
    # 75 steps left at 12.5 samples/s with 8 samples a step: 48 s
    assert eta_seconds(25, 100, 12.5, 8) == pytest.approx(48.0)
    assert eta_seconds(25, 100, None, 8) is None and eta_seconds(25, 100, 0.0, 8) is None
    assert eta_seconds(120, 100, 5.0, 8) == 0.0
    done = SlotRow(slot="expert-0", cluster=0, state="done", step=100, target=100)
    fast = SlotRow(slot="expert-1", cluster=1, state="training", step=50, target=100, eta_s=30.0)
    slow = SlotRow(slot="router", cluster=None, state="training", step=1, target=50, eta_s=300.0)
    free = SlotRow(slot="expert-2", cluster=2, state="free", target=100)
    assert run_eta([done, fast, slow]) == 300.0  # slots train in parallel: the slowest decides
    assert run_eta([done, fast, free]) is None  # a cluster nobody trains yet has no ETA
    assert run_eta([done]) == 0.0
    history = LossHistory(keep=3)
    for loss in (1.0, 0.8, 0.8, 0.5, 0.4):
        st = SwarmStatus(run_id="r", num_clusters=1, progress=0.5, peers=[], at=0.0,
                         slots=[SlotRow(slot="expert-0", cluster=0, state="training", loss=loss)])
        history.apply(st)
    assert st.slots[0].loss_history == [0.8, 0.5, 0.4]  # repeated readings are not new points
    assert sparkline([1.0, 0.5, 0.0]) == "█▅▁" and sparkline([0.3]) == "" and sparkline([2.0, 2.0]) == "▁▁"
    st.eta_s = 3700.0
    st.slots[0].eta_s = 48.0
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(render(st))
    assert "eta 62m" in buf.getvalue() and "48s" in buf.getvalue() and sparkline([0.8, 0.5, 0.4]) in buf.getvalue()


# ---- the run bundle ----


def test_bundle_split_and_verification(tiny_run, synth_dir, tmp_path):
    from protocol.run import RunSpec
    from swarm.identity import load_identity

    creator, other = load_identity(tmp_path / "creator"), load_identity(tmp_path / "other")
    spec = RunSpec.model_validate({**tiny_run[0].model_dump(), "creator": creator.public_key_bytes.decode()})
    dirs = split_by_cluster(spec, synth_dir, tmp_path / "clusters")
    from expert.shards import load_dataset

    sizes = [len(load_dataset(d)[1]) for d, _ in dirs]
    held = [len(load_dataset(h)[1]) for _, h in dirs]
    assert sizes == [len(spec.train_clips(k)) for k in range(2)]
    assert held == [len(spec.holdout_clips(k)) for k in range(2)]
    bundle = tmp_path / "bundle"
    good = SwarmRunManifest(run_id=spec.run_id, created_by=PEER_A, created_at=1.0, clusters=tuple(
        ClusterData(cluster=k, cid=_cid(k), clips=n, bytes=1, holdout_cid=_cid(k + 5), holdout_clips=h,
                    holdout_bytes=1) for k, (n, h) in enumerate(zip(sizes, held, strict=True))))
    write_bundle(bundle, spec, good, creator)
    assert _verify_bundle(bundle, spec.run_id, CID, creator.public_key_bytes).spec.run_id == spec.run_id
    with pytest.raises(IntegrityError, match="holds run"):
        _verify_bundle(bundle, "run-" + "0" * 32, CID)
    with pytest.raises(ForeignBundleError, match="not from the run's creator"):  # another key's pointer
        _verify_bundle(bundle, spec.run_id, CID, other.public_key_bytes)
    # the creator's run.json with another swarm.json (someone else's cluster data): not the creator's signature
    hijacked = good.model_copy(update={"clusters": (good.clusters[0].model_copy(update={"cid": _cid(9)}),
                                                    good.clusters[1])})
    (bundle / SWARM_FILE).write_bytes(canonical_json(hijacked))
    with pytest.raises(ForeignBundleError, match="not signed by the run's creator"):
        _verify_bundle(bundle, spec.run_id, CID)
    write_bundle(bundle, spec, hijacked, other)  # re-signed by another key
    with pytest.raises(ForeignBundleError, match="not signed by the run's creator"):
        _verify_bundle(bundle, spec.run_id, CID)
    lying = good.model_copy(update={"clusters": (good.clusters[0].model_copy(update={"clips": sizes[0] + 1}),
                                                 good.clusters[1])})
    write_bundle(bundle, spec, lying, creator)
    with pytest.raises(IntegrityError, match="cluster sizes"):
        _verify_bundle(bundle, spec.run_id, CID)
    nobody = tiny_run[0]  # a spec that names no creator cannot be a swarm's run
    write_bundle(bundle, nobody, good.model_copy(update={"run_id": nobody.run_id}), creator)
    with pytest.raises(IntegrityError, match="names no creator"):
        _verify_bundle(bundle, nobody.run_id, CID)


def test_swarm_manifest_rejects_clusters_out_of_order():
    with pytest.raises(ValueError, match=r"0\.\.K-1"):
        SwarmRunManifest(run_id="run-x", created_by=PEER_A, created_at=1.0,
                         clusters=(ClusterData(cluster=1, cid=CID, clips=1, bytes=1, holdout_cid=CID, holdout_clips=1,
                                               holdout_bytes=1),))


# ---- logs and network flags ----


def test_log_formats():
    rec = logging.LogRecord("node.daemon", logging.INFO, __file__, 1, "published", None, None)
    rec.fields = {"step": 10, "cid": None}
    assert json.loads(JsonFormatter().format(rec)) | {"ts": 0} == {"ts": 0, "level": "info", "logger": "node.daemon",
                                                                   "msg": "published", "step": 10, "cid": None}
    assert TextFormatter().format(rec).endswith("published step=10")


def test_network_flags():
    from node.options import network_config

    cfg = network_config(initial_peers=[], host="0.0.0.0", port=31337, announce_host="203.0.113.5",
                         nat_traversal=False, use_relay=False)
    assert cfg.host_maddrs == ("/ip4/0.0.0.0/tcp/31337",) and cfg.announce_maddrs == ("/ip4/203.0.113.5/tcp/31337",)
    kw = network_config(initial_peers=[], host="127.0.0.1", port=0, announce_host=None, nat_traversal=False,
                        use_relay=False).dht_kwargs()
    assert kw["nat_port_map"] is False and kw["auto_nat"] is False and kw["host_maddrs"] == ["/ip4/127.0.0.1/tcp/0"]
    with pytest.raises(ParisError, match="fixed --port"):
        network_config(initial_peers=[], host="0.0.0.0", port=0, announce_host="203.0.113.5", nat_traversal=False,
                       use_relay=False)
    relay = "/ip4/198.51.100.1/tcp/31337/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    kw = network_config(initial_peers=[relay], host="0.0.0.0", port=31337, announce_host=None, nat_traversal=False,
                        use_relay=False, behind_nat=True).dht_kwargs()
    assert kw["use_relay"] and kw["use_auto_relay"] and kw["force_reachability"] == "private"
    assert kw["announce_maddrs"] == [relay + "/p2p-circuit"]  # not 0.0.0.0, which nobody can dial
    assert kw["trusted_relays"] == [relay]
    assert kw["nat_port_map"] is False  # no UPnP unless --nat
    public = network_config(initial_peers=[relay], host="0.0.0.0", port=31337, announce_host="203.0.113.5",
                            nat_traversal=False, use_relay=True).dht_kwargs()
    assert public["use_relay"] and not public["use_auto_relay"] and "force_reachability" not in public


# ---- user mistakes on the swarm commands end in one line ----


@pytest.mark.parametrize("args, message", [
    (["join", "--role", "boss"], "--role 'boss'"),
    (["join", "--log-format", "xml"], "--log-format 'xml'"),
    (["join", "--preset", "huge"], "--preset 'huge'"),
    (["join", "--initial-peers", "127.0.0.1:5000"], "expected a full multiaddr"),
    (["status", "--once"], "give --initial-peers"),
    (["status", "--watch"], "--watch streams JSON: give --json too"),
    (["status", "--once", "--initial-peers", f"/ip4/127.0.0.1/tcp/1/p2p/{PEER_A}"], "none of the initial peers"),
    (["fetch", "--out", "x", "--initial-peers-file", "/nonexistent/node.json"], "no node file"),
])
def test_swarm_command_mistakes(args, message, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from node import nodefile
    from node.cli import app

    class Clock:  # the peers-file wait runs on a fake clock: no real two minutes
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, s: float) -> None:
            cls.now += s

    monkeypatch.setattr(nodefile, "time", Clock)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    text = result.output + (str(result.exception) if result.exception and not isinstance(result.exception,
                                                                                          SystemExit) else "")
    assert message in text, text


def test_a_permissioned_run_counts_only_its_trainers_checkpoints():
    from dataclasses import replace

    from swarm.claim_logic import ClaimView
    from swarm.state import VerifiedState, verified_snapshot

    view = _view([(PEER_A, _ck("expert-0", 9, _cid(0))), (PEER_B, _ck("expert-0", 10, _cid(1), parent=_cid(0)))])
    assert [c.step for c in view.accepted_checkpoints("expert-0")] == [10, 9]
    closed = replace(view, rules=replace(view.rules, trainers=frozenset({PEER_A})))
    assert [c.step for c in closed.accepted_checkpoints("expert-0")] == [9]  # PEER_B may not train
    assert closed.rules.may_train(PEER_A) and not closed.rules.may_train(PEER_B)
    leases = [ClaimView(PEER_A, 0, ClaimState.TRAINING), ClaimView(PEER_B, 1, ClaimState.TRAINING)]
    snap = verified_snapshot(2, leases, VerifiedState({0: None, 1: None}, {}, trainers=frozenset({PEER_A})))
    assert [c.peer_id for c in snap.claims] == [PEER_A]  # an outsider's lease does not hold cluster 1


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
def test_allow_trainer_must_be_a_peer_id():
    import sys

    from tests import zygote

    r = zygote.run_to_end([sys.executable, "-m", "node.cli", "join", "--allow-trainer", "not a peer"],
                          cwd=zygote.ROOT, env=zygote.ENV, timeout=120)
    assert r.returncode != 0 and "--allow-trainer" in r.stderr and "Traceback" not in r.stderr


def test_a_misstated_size_cannot_shadow_an_accepted_checkpoint():
    """Someone re-announces an honest checkpoint with a false byte count: consumers still get the honest
    record to try (a download refuses a size that does not match before writing anything)."""
    honest = _ck("expert-0", 9, _cid(0)).model_copy(update={"bytes": 7_000_000, "ts": 100.0})
    liar = honest.model_copy(update={"bytes": 1, "ts": 200.0})
    view = _view([(PEER_A, honest), (PEER_B, liar)])
    assert sorted(c.bytes for c in view.accepted_checkpoints("expert-0")) == [1, 7_000_000]


def test_verifiers_check_the_newest_accepted_checkpoint_and_the_frontier_not_the_history():
    from node.role_verifier import to_verify

    chain = [_ck("expert-0", 10, _cid(0)), _ck("expert-0", 20, _cid(1), parent=_cid(0)),
             _ck("expert-0", 30, _cid(2), parent=_cid(1))]
    dangling = _ck("expert-0", 40, _cid(3), parent=_cid(9))
    view = _view([(PEER_A, c) for c in (*chain, dangling)], q=0)  # q = 0: the chain is accepted as announced
    assert [c.cid for c in view.accepted_checkpoints("expert-0")][:1] == [_cid(2)]
    assert [c.cid for c in to_verify(view, PEER_B, "expert-0")] == [_cid(2)]  # not 10, 20; never the dangling one
    assert to_verify(view, PEER_A, "expert-0") == []  # nobody verifies its own work
    # with attestations required nothing is accepted yet: the frontier is checked from its root up
    pending = _view([(PEER_A, c) for c in chain], q=1)
    assert [c.cid for c in to_verify(pending, PEER_B, "expert-0")] == [_cid(0), _cid(1), _cid(2)]


def test_dashboard_peer_totals():
    from node.swarm_view import PeerRow

    peers = [PeerRow(peer_id=PEER_A, role="auto", software="paris-node 0.1", age_s=3.0, samples_trained=1_234_000,
                     checkpoints_accepted=12),
             PeerRow(peer_id=PEER_B, role="verifier", software="paris-node 0.1", age_s=9.0, samples_trained=0,
                     served_bytes=52_000_000)]
    st = SwarmStatus(run_id="r", num_clusters=1, progress=0.5, peers=peers, at=0.0, slots=[])
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(render(st))
    assert "1.2M samples in 12 accepted checkpoint(s)" in buf.getvalue()
    assert "0 samples in 0 accepted checkpoint(s), says it served 52.0MB" in buf.getvalue()


def test_a_trainer_keeps_what_verifiers_have_not_reached():
    from node.publisher import backlog_after, covered
    from swarm.acceptance import Claim, Policy, Vote, judge

    chain = [Claim("T", f"c{i}", 10 * i, f"c{i - 1}" if i > 1 else None, 1.0) for i in range(1, 6)]
    other = Claim("U", "u3", 30, "c2", 1.0)  # the other side of a healed partition
    votes = [Vote("V", c.cid, c.step, c.parent, c.val_loss, True) for c in (chain[0], chain[2])]
    judged = judge([*chain, other], votes, Policy(attestations=1))
    # c3 is accepted only if c2 is: here c2 lacks an attestation, so only c1 is accepted and covers nothing else
    assert covered(judged) == {"c1"}
    votes.append(Vote("V", "c2", 20, "c1", 1.0, True))
    assert covered(judge([*chain, other], votes, Policy(attestations=1))) == {"c1", "c2", "c3"}
    backlog = [(f"c{i}", 10 * i) for i in range(1, 6)]
    stay, gone = backlog_after(backlog, {"c1", "c2", "c3"}, keep=32)
    assert [c for c, _ in stay] == ["c4", "c5"] and [c for c, _ in gone] == ["c1", "c2", "c3"]
    stay, gone = backlog_after(backlog, set(), keep=3)  # over the bound: the oldest and the newest stay
    assert [c for c, _ in stay] == ["c1", "c2", "c5"] and {c for c, _ in gone} == {"c3", "c4"}


def test_a_reader_replays_the_oldest_contested_checkpoint_past_the_head_and_each_once():
    """node.disputes.next_dispute: a failed replay (by a peer that is not the trainer) contradicted by another
    verifier's matching replay makes a dispute; the reader takes the oldest past the slot's accepted head, never
    one it tried, and nothing once its own replay settled it."""
    from dataclasses import replace

    from node.disputes import next_dispute
    from swarm.acceptance import Vote

    c1, c2 = _ck("expert-0", 10, CID), _ck("expert-0", 20, CID[:-1] + "b", parent=CID)
    minted = AttestationBody(slot="expert-0", cid=c1.cid, step=10, parent=None, val_loss=c1.val_loss,
                             verdict="reject", reason="replay differs by 0.9", replayed=True, ts=1.0)
    honest = [AttestationBody(slot="expert-0", cid=c.cid, step=c.step, parent=c.parent, val_loss=c.val_loss,
                              verdict="accept", replayed=c is c1, ts=1.0) for c in (c1, c2)]
    view = _view([(PEER_A, c1), (PEER_A, c2)], attestations=[(PEER_B, minted), (PEER_A + "x", honest[0]),
                                                           (PEER_A + "x", honest[1])], q=1)
    assert next_dispute(view, "expert-0", set()) == c1  # c2 is rejected only as its descendant
    assert next_dispute(view, "expert-0", {c1.cid}) is None
    mine = replace(view, local=((c1.cid, Vote("local", c1.cid, 10, None, c1.val_loss, True, replayed=True)),))
    assert [c.cid for c in mine.accepted_checkpoints("expert-0")] == [c2.cid, c1.cid]
    assert next_dispute(mine, "expert-0", set()) is None


def test_status_names_the_accepted_checkpoint_where_two_lineages_reach_one_step():
    """node.swarm_view: two checkpoints at one step (a takeover trained the interval again): a failed replay
    contests one, another verifier's replay matched it, and the other is accepted. `verified_step` is that
    step either way; `verified_cid` says which of the two a reader that replayed nothing accepts."""
    from node.swarm_view import _slot_row

    disputed, other = _ck("expert-0", 10, CID), _ck("expert-0", 10, CID[:-1] + "c", ts=101.0)
    minted = AttestationBody(slot="expert-0", cid=disputed.cid, step=10, parent=None, val_loss=disputed.val_loss,
                             verdict="reject", reason="replay differs by 0.9", replayed=True, ts=1.0)
    honest = [AttestationBody(slot="expert-0", cid=c.cid, step=10, parent=None, val_loss=c.val_loss,
                              verdict="accept", replayed=True, ts=1.0) for c in (disputed, other)]
    for newest in (disputed, other):  # the accepted one is the older record, then the newer
        view = _view([(PEER_A, disputed), (PEER_A + "t", replace_ts(other, 101.0 if newest is other else 99.0))],
                     attestations=[(PEER_B, minted), *((PEER_A + "x", h) for h in honest)], q=1)
        row = _slot_row(view, "expert-0", 0, "done", None, now=200.0)
        assert row.verified_step == 10 and row.verified_cid == other.cid
        assert row.contested == [f"step 10 ({disputed.cid[-8:]})"]
    lone = _slot_row(_view([(PEER_A, disputed)], attestations=[(PEER_B, minted), (PEER_A + "x", honest[0])], q=1),
                     "expert-0", 0, "done", None, now=200.0)
    assert lone.verified_step is None and lone.verified_cid is None and lone.contested


def replace_ts(body: CheckpointBody, ts: float) -> CheckpointBody:
    return body.model_copy(update={"ts": ts})


def test_a_member_bucket_that_failed_to_read_is_shown_but_never_stops_a_decision():
    """Members decide nothing: a view whose member buckets did not read (one flooded past the reply limit by
    minted identities, say) is still decidable; a failed read of a key that decides (claims, checkpoints)
    is not."""
    from dataclasses import replace

    from swarm.dht import DHTReadError

    view = replace(_view([]), member_failures=("members/b7: the reply was over 4 MiB",))
    assert view.decidable() is view
    with pytest.raises(DHTReadError, match="claims"):
        replace(view, failed=("claims: timed out",)).decidable()


def test_a_trainer_keeps_the_parent_of_its_newest_checkpoint_as_evidence(tmp_path):
    """Once verifiers accepted its work a trainer keeps only its newest checkpoint and that one's parent: a
    replay of the newest interval (a failed replay minted against the head after the run) needs the parent.
    Real content store, no network."""
    import asyncio

    from node.publisher import Publisher
    from swarm.cas import ContentStore

    async def main() -> None:
        store = ContentStore(None, tmp_path / "store")  # local pins and gc only: never started
        cids = []
        for i in range(3):
            d = tmp_path / f"ckpt{i}"
            d.mkdir()
            (d / "w.bin").write_bytes(os.urandom(1000) + bytes([i]))
            cids.append(await store.put(d, provide=False))
        pub = Publisher(None, store, "run", gossip=None)
        for i, cid in enumerate(cids):  # what publish() does for each of a trainer's checkpoints
            pub.keep_evidence("expert-0", cids[i - 1] if i else None)
            pub.replace_pin("expert-0", cid, 10 * (i + 1))
            pub._trim("expert-0", set(cids))  # verifiers accepted all of them: the backlog holds nothing
        assert set(store.blobs.pins()) == {cids[1], cids[2]}
        assert store.blobs.has(cids[1]) and not store.blobs.has(cids[0])

    asyncio.run(main())


def test_a_new_swarm_publishes_at_its_presets_cadence_unless_told_otherwise(tmp_path):
    from expert.assets import asset_of
    from expert.presets import get_preset
    from protocol.swarm_run import Schedule

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    told = Schedule(checkpoint_every=50, checkpoint_minutes=5.0)
    base = told.with_preset_cadence(get_preset("base", vae=asset_of(tmp_path / "vae")).train)
    assert base.checkpoint_every == 2000 and base.checkpoint_minutes == 5.0  # the clock still bounds it
    assert told.with_preset_cadence(get_preset("tiny").train).checkpoint_every == 100
    assert told.checkpoint_every == 50  # --checkpoint-every N: the schedule as given


def test_a_record_with_a_dangling_lineage_earns_no_progress_and_no_lease():
    """An attacker's checkpoint record at step 10^6 naming a parent nobody announced, with its own lease on the
    cluster: it counts as no progress, so the honest owner that publishes accepted checkpoints keeps the
    cluster; checkpoints only awaiting attestations keep a lease fresh but rank nobody."""
    from dataclasses import replace

    from swarm.claim_logic import ClaimView, winner
    from swarm.state import verified_snapshot, verified_state

    honest = [(PEER_A, _ck("expert-0", 10, _cid(0), ts=1000.0)),
              (PEER_A, _ck("expert-0", 20, _cid(1), parent=_cid(0), ts=1010.0))]
    forged = (PEER_B, _ck("expert-0", 10**6, _cid(2), parent=_cid(9), ts=1020.0))
    view = _view([*honest, forged], q=0)
    state = verified_state(view)
    assert (PEER_B, 0) not in state.activity and state.activity[(PEER_A, 0)][0] == 20
    leases = [ClaimView(PEER_A, 0, ClaimState.TRAINING, since=900.0), ClaimView(PEER_B, 0, ClaimState.TRAINING,
                                                                                 since=900.0)]
    snap = verified_snapshot(2, leases, replace(state, now=1030.0, grace=60.0))
    assert winner(snap, 0) == PEER_A


def test_awaiting_checkpoints_keep_a_lease_fresh_but_only_accepted_ones_rank():
    from swarm.state import verified_state

    junk = [(PEER_B, _ck("expert-0", 1, _cid(i), ts=1000.0)) for i in range(3)]  # nobody serves them
    honest = [(PEER_A, _ck("expert-0", 10, _cid(5), ts=990.0))]
    state = verified_state(_view([*junk, *honest], q=1, attestations=[
        ("QmVerifier" + "z" * 36, AttestationBody(slot="expert-0", cid=_cid(5), step=10, parent=None, val_loss=0.5,
                                                  verdict="accept", ts=995.0))]))
    assert state.activity[(PEER_A, 0)] == (10, 990.0)
    assert state.activity[(PEER_B, 0)] == (0, 1000.0)  # fresh, but no progress: it ranks below the owner


def test_the_dashboard_draws_a_screen_not_the_swarm():
    """1,000 peers: the 20 that trained most get a row, the rest one line that counts them by role."""
    from node.dashboard import PEER_ROWS
    from node.swarm_view import PeerRow

    peers = [PeerRow(peer_id=f"Qm{i:044d}", role="verifier" if i % 4 else "auto", software="paris-node 0.1",
                     age_s=float(i % 7), samples_trained=i * 10) for i in range(1000)]
    st = SwarmStatus(run_id="r", num_clusters=1, progress=0.5, peers=peers, at=0.0, slots=[])
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(render(st))
    text = buf.getvalue()
    assert text.count("seen ") == PEER_ROWS
    from node.dashboard import top_peers

    shown, rest = top_peers(peers)
    assert [p.samples_trained for p in shown] == [i * 10 for i in range(999, 979, -1)] and len(rest) == 980
    assert "… 980 more" in text and "735 verifier, 245 auto" in text


def test_gossip_dials_and_reconnects_spread_over_the_swarm():
    import random

    from swarm.gossip import fanout

    members = list(range(1000))
    picks = [fanout(members, 32, random.Random(seed)) for seed in range(50)]
    assert all(len(p) == 32 == len(set(p)) for p in picks)
    assert len({m for p in picks for m in p}) > 600  # not the same first 32 on every node
    assert fanout(members[:5], 32) == members[:5]
