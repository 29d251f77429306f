"""A hostile peer in a real swarm (issue "verified contributions"): real `paris-node join` daemons on 127.0.0.1
train a three-cluster tiny run while tests/swarm/evil_trainer.py, running our own client code under two
identities of its own, re-announces the run with its own cluster data, announces a random-weight checkpoint
at a huge step, DONE for a cluster it never
trained, a legitimately leased cluster's checkpoint whose weights were replaced by noise and two honestly
trained children of it whose optimizer moments (1e30) or RNG state no training leaves, an honest CID
re-announced at a huge step, and Sybil attestations of all of it. The honest swarm still trains every cluster
to its target, and `fetch` assembles only honest weights."""

from __future__ import annotations

import json

import pytest

from tests.daemons import PACED, Daemon, Evil, cli, slots, status, wait_status, wait_until

pytestmark = pytest.mark.slow

TARGET, ROUTER, EVERY = 60, 10, 10


def common() -> list[str]:
    return ["--preset", "micro", "--clips", "120", "--clusters", "3", "--target-steps", str(TARGET),
            "--router-steps", str(ROUTER), "--checkpoint-every", str(EVERY), "--period", "1", "--cpu-threads", "1",
            "--log-format", "json"]


@pytest.fixture
def swarm(tmp_path):
    started: list = []

    def start(kind, *args):
        proc = Daemon(tmp_path / args[0], *args[1:]) if kind == "daemon" else Evil(tmp_path / "evil", *args)
        started.append(proc)
        return proc

    yield tmp_path, start
    for proc in started:
        proc.stop()


def test_a_hostile_peer_cannot_poison_the_ensemble_or_stop_a_cluster(swarm):
    root, start = swarm
    boot = start("daemon", "boot", *common(), "--role", "verifier")
    boot.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "bootstrap ready")
    peers_file = root / "boot" / "node.json"
    evil = start("evil", peers_file)
    # the honest joiners come once the run is hijacked; the attacker's other lies land while they train
    wait_until(lambda: evil.act("hijack") or evil.proc.poll() is not None, 300,
               lambda: f"the attacker's hijack ({evil.acts}); its log: "
                       f"{(root / 'evil' / 'evil.log').read_text()[-3000:]}")
    w1 = start("daemon", "w1", *common(), "--initial-peers-file", str(peers_file))
    w2 = start("daemon", "w2", *common(), "--initial-peers-file", str(peers_file))
    deadline_acts = ("random0", "amplify", "done1", "lease")
    wait_until(lambda: all(evil.act(a) for a in deadline_acts) or evil.proc.poll() is not None, 300,
               lambda: f"the attacker's first acts ({evil.acts}); its log: "
                       f"{(root / 'evil' / 'evil.log').read_text()[-3000:]}")
    wait_until(lambda: evil.act("sybil") is not None or evil.proc.poll() is not None, 400,
               lambda: f"the attacker's Sybil attestations ({evil.acts}); its log: "
                       f"{(root / 'evil' / 'evil.log').read_text()[-3000:]}")
    assert evil.act("noise") and evil.act("optim") and evil.act("rng") and evil.act("reannounce"), evil.acts
    # joiners took the creator's bundle, not the newer one that the attacker announced
    bundle = evil.act("ready")["bundle"]
    for w in (w1, w2):
        ready = w.wait_for(lambda e: e.get("msg") == "run ready", 60, "the run is ready")
        assert ready["bundle"] == bundle != evil.act("hijack")["cid"]
        assert any("only its creator" in e.get("msg", "") or "not from the run's creator" in e.get("msg", "")
                   for e in w.events()), "the foreign pointer was not logged"
    poison = {evil.act(a)["cid"] for a in ("random0", "noise", "amplify", "optim", "rng")}
    leased = evil.act("lease")["cluster"]

    # the honest swarm trains every cluster to its target, the leased one included, and the router
    st = wait_status(root / "boot", lambda s: all(slots(s)[f"expert-{k}"]["state"] == "done" for k in range(3))
                      and (slots(s)["router"]["verified_step"] or 0) >= ROUTER, 900, "every cluster done")
    for k in range(3):
        row = slots(st)[f"expert-{k}"]
        assert row["verified_step"] >= TARGET, row
        # the lie at step 10**6 lies in an epoch far past the lineage, which no reader visits (swarm.layout: a
        # slot is read from its certified head on, up to the first empty epochs): not even read, let alone believed
        assert row["claimed_step"] < 10**6, row
        if k == 1:
            assert row["rejected"], row  # the dashboard names the refused checkpoints (the ~150 GiB one here)
    # the verifier refused each poison with a reason; nobody took over from one
    verdicts = {e["cid"]: e for e in boot.events() if e.get("msg", "").startswith("attested ")}
    unread = evil.act("random0")["cid"]  # step 10**6: in an epoch nobody reads (swarm.layout), nothing to check
    for cid in poison - ({unread} - verdicts.keys()):
        assert verdicts[cid]["verdict"] == "reject", verdicts.get(cid)
    assert "optimizer moments" in verdicts[evil.act("optim")["cid"]]["reason"], verdicts[evil.act("optim")["cid"]]
    assert "RNG state" in verdicts[evil.act("rng")["cid"]]["reason"], verdicts[evil.act("rng")["cid"]]
    takeovers = [e for w in (w1, w2) for e in w.events() if e.get("msg", "").startswith("took over")]
    assert takeovers and not {e["cid"] for e in takeovers} & poison
    assert any(e.get("msg") == f"took over expert-{leased} from its newest accepted checkpoint" for e in takeovers)

    # fetch assembles only honest weights, each recomputed here
    honest = {e["cid"] for w in (w1, w2, boot) for e in w.events() if e.get("msg", "").startswith("published ")}
    honest.add(evil.act("lease")["cid"])  # the attacker's one honest interval is honest work
    out = root / "ensemble"
    r = cli("fetch", "--initial-peers-file", str(peers_file), "--out", str(out), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(r.stdout)
    assert manifest["clusters"] == [0, 1, 2]
    for e in manifest["experts"]:
        assert e["cid"] in honest and e["cid"] not in poison and e["step"] >= TARGET, e
        assert e["val_loss"] is not None and any(a["verdict"] == "accept" for a in e["attestations"]), e
    assert manifest["router"]["cid"] in honest
    assert (out / "swarm_manifest.json").is_file()
    st = status(root / "boot")
    assert all(s["state"] == "done" for s in st["slots"][:3]), st["slots"]
    # the ~150 GiB manifest made no honest store grow: each holds the run's data and a few tiny checkpoints
    for name in ("boot", "w1", "w2"):
        held = sum(f.stat().st_size for f in (root / name / "store").rglob("*") if f.is_file())
        assert held < 1 << 30, (name, held)


def test_identities_that_claim_every_cluster_and_never_train_cannot_stop_the_run(swarm):
    """Leases are earned by progress: squatters hold both clusters first; once their grace window (3 checkpoint
    intervals of 0.1 minute) passes without a checkpoint, honest nodes claim and train both to the target."""
    root, start = swarm
    args = ["--preset", "micro", "--clips", "80", "--clusters", "2", "--target-steps", "30", "--router-steps", "5",
            "--checkpoint-every", "10", "--checkpoint-minutes", "0.1", "--period", "1", "--cpu-threads", "1",
            "--log-format", "json"]
    boot = start("daemon", "boot", *args, "--role", "verifier")
    boot.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "bootstrap ready")
    peers_file = root / "boot" / "node.json"
    squat = start("evil", peers_file, "squatter.py", "--count", "2")
    wait_until(lambda: len([a for a in squat.acts if a.get("cluster") is not None]) == 2
               or squat.proc.poll() is not None, 180,
               lambda: f"the squatters' leases ({squat.acts}); log: {(root / 'evil' / 'evil.log').read_text()[-2000:]}")
    squatters = {a["peer"] for a in squat.acts}
    workers = [start("daemon", n, *args, "--initial-peers-file", str(peers_file)) for n in ("w1", "w2")]
    st = wait_status(root / "boot", lambda s: all(slots(s)[f"expert-{k}"]["state"] == "done" for k in range(2)),
                      600, "both clusters trained to their target by honest nodes")
    assert all(slots(st)[f"expert-{k}"]["verified_step"] >= 30 for k in range(2)), st["slots"]
    trained = {int(e["msg"].split()[1]) for w in workers for e in w.events()
               if e.get("msg", "").startswith("cluster ") and e["msg"].endswith("reached its target")}
    assert trained == {0, 1}  # by the honest nodes
    assert squat.proc.poll() is None and squatters  # the squatters were still renewing all along
    # the honest nodes claimed clusters that squatters held: each claim came after that lease went stale
    claims = [e for w in workers for e in w.events() if e.get("msg", "").startswith("claimed cluster")]
    assert {int(e["msg"].split()[2]) for e in claims} == {0, 1}


def test_a_patient_attacker_cannot_steer_the_ensemble_or_stall_two_auto_nodes(swarm):
    """Two `auto` nodes (no dedicated verifier) train a K = 2 run while tests/swarm/patient_attacker.py aims
    just inside the old rules: a record dated a year ahead, a record at step 10^6 on a dangling lineage with a
    lease on every cluster, 16 leases of one identity dated 10,000 s back, eight unfetchable step-1 records per
    slot, and copies of expert-0's first accepted checkpoint at ten later steps (optimizer counters adjusted to
    pass the load check) by a peer that never held its lease, each CID re-rolled against the old replay rule.
    The run still finishes, no honest node exits, refuses leases for its clock, or lets a copy or a lie into
    `fetch`."""
    from tests.daemons import run_finished, wait_status

    root, start = swarm
    # paced: the attacker's acts must land while the honest nodes still train (on micro at full speed the run was
    # over while the attacker was still placing its records, and one of its stores was refused)
    args = [*PACED, "--clips", "80", "--clusters", "2", "--target-steps", "40", "--router-steps", "10",
            "--checkpoint-every", "10", "--checkpoint-minutes", "0.1", "--period", "1", "--cpu-threads", "1",
            "--log-format", "json"]
    a = start("daemon", "a", *args)
    a.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "bootstrap ready")
    peers_file = root / "a" / "node.json"
    evil = start("evil", peers_file, "patient_attacker.py", "--interval", "10")
    b = start("daemon", "b", *args, "--initial-peers-file", str(peers_file))
    st = wait_status(peers_file, run_finished, 600, "every slot accepted at its target", watch=(a, b))
    wait_until(lambda: evil.act("minted") is not None or evil.proc.poll() is not None, 240,
               lambda: f"the attacker's acts ({evil.acts}); log: {(root / 'evil' / 'evil.log').read_text()[-2000:]}")
    assert evil.act("future")["stored"] is False  # every validator refused it, ours first
    copies = evil.act("copies")["cids"]
    assert len(copies) == 10
    honest_events = [e for d in (a, b) for e in d.events()]
    refused = [e for e in honest_events if e.get("msg") == "attested expert-0 checkpoint" and e.get("cid") in copies]
    assert refused and all(e["verdict"] == "reject" for e in refused), refused
    slots = {s["slot"]: s for s in st["slots"]}
    assert slots["expert-0"]["verified_step"] < 40 + 10 * 10  # the copies' chain never counted
    for d in (a, b):
        text = d.log.read_text(errors="replace")
        assert "clock is about" not in text and d.proc.poll() is None, d.home.name
    out = root / "ensemble"
    r = cli("fetch", "--initial-peers-file", str(peers_file), "--out", str(out), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = (out / "swarm_manifest.json").read_text()
    lies = {*copies, *evil.act("dangling")["cids"]}
    assert not any(cid in manifest for cid in lies)
    for who in ("squat", "copier", "minter"):
        assert evil.act("ready")[who] not in manifest  # trained nothing that was assembled

    # the run is over: a failed replay minted against expert-1's accepted head. The honest node that did not
    # train it has replayed the head (now, from the parent its trainer keeps as evidence, or before) and it
    # matched; `status` shows the dispute; `fetch` replays the head itself, finds the failed replay was a lie,
    # and assembles the head rather than falling back
    evil.send({"op": "mint", "slot": "expert-1"})
    wait_until(lambda: evil.act("minted-head") is not None, 60, lambda: f"the attacker's acts ({evil.acts})")
    head = evil.act("minted-head")
    cids = head["cids"]  # one head, or two where a takeover left two lineages at the last step
    assert head["stored"] and head["step"] == 40 and cids, head
    wait_until(lambda: all(any(e.get("msg") == "attested expert-1 checkpoint" and e.get("cid") == cid
                               and e.get("replayed") and e.get("verdict") == "accept"
                               for d in (a, b) for e in d.events()) for cid in cids),
               180, lambda: "an honest replay of each disputed head")

    def slots_of(st: dict) -> dict[str, dict]:
        return {x["slot"]: x for x in st["slots"]}

    st = wait_status(peers_file, lambda s: all(any(cid[-8:] in c for c in slots_of(s)["expert-1"]["contested"])
                                               for cid in cids), 120, "status shows the contested heads", watch=(a, b))
    row = slots_of(st)["expert-1"]  # the strict view, for a reader that replayed nothing
    assert (row["verified_step"] or 0) < 40 and row["verified_cid"] not in cids, row
    out = root / "ensemble-after"
    r = cli("fetch", "--initial-peers-file", str(peers_file), "--out", str(out), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "swarm_manifest.json").read_text())
    # one replay settles the slot: once a head matched, the slot's head is accepted and no dispute lies past it
    assert len(got["disputes"]) == 1 and got["disputes"][0]["cid"] in cids, got["disputes"]
    assert got["disputes"] == [{"slot": "expert-1", "step": 40, "cid": got["disputes"][0]["cid"], "outcome": "matched",
                                "reason": None}], got["disputes"]
    assert next(e for e in got["experts"] if e["cluster"] == 1)["cid"] == got["disputes"][0]["cid"]
