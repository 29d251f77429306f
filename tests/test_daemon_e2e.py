"""End to end, with real daemons on 127.0.0.1: three `paris-node join` processes train a two-cluster tiny run;
an owner is killed with -9 mid-training and its cluster is taken over from its last published checkpoint;
the third node seeds; `status --json` tells the truth at each stage; `status` draws every cluster in a
terminal; `fetch` assembles a folder that `ParisPipeline` samples from; SIGTERM exits cleanly. The trainers'
records live TRAINER_TTL seconds only (the other nodes' RECORD_TTL): once the trainers are gone and their TTL
has passed three times, the seeder's archived copies still make the run fetchable, and a newcomer does not
retrain it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from protocol.swarm_records import run_key
from swarm import layout
from swarm.archive import ARCHIVED_KEYS
from swarm.dht import NetworkConfig, SwarmNode
from swarm.identity import peer_id_of_public_key
from tests.daemons import CLI, ENV, PACED, ROOT, Daemon, cli, slots, status, wait_status

pytestmark = pytest.mark.slow

TARGET, ROUTER, EVERY = 80, 20, 10
RECORD_TTL = 20.0  # seconds: pointer, DONE, checkpoint and attestation records of the nodes in this module
TRAINER_TTL = 10.0  # ... but the trainers' (w1, w2): what the seeder's archive must outlive


def common(target: int = TARGET, pace: tuple[str, ...] = tuple(PACED), ttl: float = RECORD_TTL) -> list[str]:
    return [*pace, "--clips", "120", "--clusters", "2", "--target-steps", str(target), "--router-steps",
            str(ROUTER), "--checkpoint-every", str(EVERY), "--period", "1", "--cpu-threads", "1",
            "--record-days", str(ttl / 86400), "--log-format", "json"]




def _read_records(peers_file: str, run_id: str) -> dict[str, dict[str, int]]:
    """How many of the run's long-lived records a fresh reader sees live, and how many only as archived copies
    (seeders' replica records, which they re-announce themselves, are left out)."""
    info = json.loads(Path(peers_file).read_text())

    async def read(node: SwarmNode) -> dict[str, dict[str, int]]:
        out = {}
        sharded = {"checkpoints": layout.checkpoint_key, "attestations": layout.attestation_key}
        for what in (*ARCHIVED_KEYS, *sharded):
            keys = ([run_key(run_id, what)] if what not in sharded  # a tiny run's records: all in epoch 0
                    else [sharded[what](run_id, slot, 0) for slot in ("expert-0", "expert-1", "router")])
            got = [r for k in keys for r in (await node.get(k)).records if not getattr(r.body, "replica", 0)]
            out[what] = {"live": sum(r.archived_by is None for r in got),
                         "archived": sum(r.archived_by is not None for r in got),
                         "seen": sorted(f"{peer_id_of_public_key(r.owner)[-6:]}:{r.body.kind}:"
                                        f"{getattr(r.body, 'slot', '')}:{getattr(r.body, 'step', '')}:"
                                        f"{'archived' if r.archived_by else 'live'}" for r in got)}
        return out

    with tempfile.TemporaryDirectory() as home:
        node = SwarmNode.start(home, NetworkConfig(initial_peers=tuple(info["maddrs"]), client_mode=True))
        try:
            return asyncio.run(read(node))
        finally:
            node.shutdown()




@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    started: list[Daemon] = []

    def start(name: str, *args: str) -> Daemon:
        d = Daemon(root / name, *args)
        started.append(d)
        return d

    yield root, start
    for d in started:
        d.stop()


def test_three_daemons_train_take_over_seed_and_fetch(swarm):
    root, start = swarm
    # the bootstrap starts the demo run and seeds; two workers join and train
    boot = start("boot", *common(), "--role", "verifier")
    boot.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "bootstrap ready")
    info = json.loads((root / "boot" / "node.json").read_text())
    assert info["run_id"] and info["maddrs"] and info["pid"] == boot.proc.pid
    peers_file = str(root / "boot" / "node.json")
    w1 = start("w1", *common(ttl=TRAINER_TTL), "--initial-peers-file", peers_file)
    # the taker is a faster machine: the victim's training must last until the kill, the taker's need not (at the
    # victim's pace the orphaned cluster waited half a minute for the taker to finish its own)
    w2 = start("w2", *common(pace=(*PACED[:2], "--duty-cycle", "0.5"), ttl=TRAINER_TTL), "--initial-peers-file",
               peers_file)
    seeder = boot

    # both clusters in training, by w1 and w2; the seeder owns nothing
    claimed = w1.wait_for(lambda e: e.get("msg") == "role: expert", 240, "w1 claims a cluster")
    w2.wait_for(lambda e: e.get("msg") == "role: expert", 240, "w2 claims a cluster")
    victim_cluster = claimed["cluster"]
    slot = f"expert-{victim_cluster}"
    peer_ids = {json.loads((root / n / "node.json").read_text())["peer_id"] for n in ("w1", "w2")}
    st = wait_status(root / "boot", lambda s: all(slots(s)[f"expert-{k}"]["state"] == "training"
                                                   for k in range(2)), 120, "two clusters training")
    assert {slots(st)[f"expert-{k}"]["owner"] for k in range(2)} == peer_ids
    assert st["run_id"] == info["run_id"] and st["num_clusters"] == 2

    # kill -9 the owner of one cluster once the seeder holds a copy of one of its checkpoints
    seeder.wait_for(lambda e: e.get("msg") == f"replicated {slot} checkpoint" and e["step"] >= 2 * EVERY, 300,
                    "the seeder replicates the victim's checkpoints")
    w1.kill9()
    last = max(w1.published(slot))
    # the swarm knows the newest checkpoint (verified or not), or the one before: the victim logs a publication
    # once one DHT node stored its record, and that node may have been its own, which died with it
    st = wait_status(root / "boot", lambda s: slots(s)[slot]["claimed_step"] >= last - EVERY, 60,
                      "the swarm knows the victim's newest checkpoints")

    # w2 (after its own cluster, or the router) takes the orphaned cluster over from the newest checkpoint a
    # live peer still holds: the victim's last, or the one before if the victim died before it was copied
    took = w2.wait_for(lambda e: e.get("msg") == f"took over {slot} from its newest accepted checkpoint",
                       600, "takeover")
    copies = {e["cid"]: e["step"] for e in seeder.events() if e.get("msg") == f"replicated {slot} checkpoint"}
    # resumed from a checkpoint a live peer held: a copy the seeder announced, or one that a live node fetched to
    # check it (every role but `seeder` verifies, so w2 may have checked the victim's newest itself)
    checked = {e["cid"] for n in (seeder, w2) for e in n.events()
               if e.get("msg") == f"attested {slot} checkpoint" and e["ts"] <= took["ts"]}
    victim = {e["cid"]: e["step"] for e in w1.events() if e.get("msg") == f"published {slot} checkpoint"}
    assert took["cid"] in victim and took["cid"] in copies.keys() | checked, (took, copies, checked)
    # the newest checkpoint that, when w2 decided, a live peer held and a verifier (one attestation: the run's
    # rule) had accepted; or the one before, if that acceptance was still reaching w2. Copies and attestations
    # made after the decision do not count: under load the seeder's copies of steps 20 and 30 once came before
    # anyone had checked them, and w2 rightly resumed from step 10
    before = [e for n in (seeder, w2) for e in n.events() if e["ts"] <= took["ts"]]
    held = {e["cid"] for e in before if e.get("msg") == f"replicated {slot} checkpoint"} | checked
    accepted = {e["cid"] for e in before if e.get("msg") == f"attested {slot} checkpoint" and e["verdict"] == "accept"}
    ready = [step for cid, step in victim.items() if cid in held & accepted]
    assert ready and took["step"] >= max(ready) - EVERY, (took, ready, copies)
    # not asserted against `last`: how far the copies lag behind what the victim published is the machine's
    # speed (CI once killed it at 60 with copies to 30); what a live peer held is the bound that matters
    assert took["step"] >= min(last, 2 * EVERY) - EVERY, f"resumed at {took['step']}, last published was {last}"
    st = wait_status(root / "boot", lambda s: all(slots(s)[f"expert-{k}"]["state"] == "done" for k in range(2))
                      and (slots(s)["router"]["checkpoint_step"] or 0) >= ROUTER, 600, "experts and router done")
    for k in range(2):
        assert slots(st)[f"expert-{k}"]["checkpoint_step"] == TARGET
    # the seeder replicated every newest checkpoint: each is held by its trainer and by the seeder
    seeder.wait_for(lambda e: e.get("msg") == "replicated router checkpoint" and e["step"] >= ROUTER, 120,
                    "seeder replicates the router")
    st = status(root / "boot")
    assert all(s["providers"] >= 2 for s in st["slots"]), st["slots"]
    assert not [e for e in seeder.events() if e.get("msg") == "role: expert"]

    # the last trainer leaves; once its records' TTL has passed three times, only the seeder's
    # archived copies are left, and they are enough: the run is fetchable and a newcomer does not retrain it
    w2.proc.send_signal(signal.SIGTERM)
    assert w2.wait_exit(30) == 0
    left = time.monotonic()

    # meanwhile (its records live on for a TTL), a terminal dashboard shows every cluster and the router
    screen = _pty_screen(["status", "--initial-peers-file", peers_file, "--no-gossip"], want=("expert-0", "expert-1",
                                                                                              "router", "done"))
    for word in ("expert-0", "expert-1", "router", "done", info["run_id"]):
        assert word in screen, screen[-3000:]
    time.sleep(max(0.0, left + 3 * TRAINER_TTL + 2 - time.monotonic()))
    want = 2 * TARGET // EVERY  # the checkpoints of both experts' accepted lineages, and their attestations

    def enough(r: dict) -> bool:
        return (r["checkpoints"]["archived"] >= want and r["done"]["archived"] == 2
                and r["attestations"]["live"] + r["attestations"]["archived"] >= want)

    for _ in range(3):  # a copy being re-published at the moment of the read may be missing from it
        records = _read_records(peers_file, info["run_id"])
        if enough(records):
            break
        time.sleep(2)
    # the trainers' own records are gone; what is read are the seeder's copies (the verifier, still running,
    # keeps its own attestations alive itself)
    assert records["checkpoints"]["live"] == 0 and records["done"]["live"] == 0, records
    assert enough(records), records
    st = status(root / "boot")
    assert all(slots(st)[f"expert-{k}"]["state"] == "done" for k in range(2)), st["slots"]
    w3 = start("w3", *common(), "--initial-peers-file", peers_file)
    w3.wait_for(lambda e: e.get("msg") == "role: verifier", 180, "the newcomer finds nothing to train")
    assert not [e for e in w3.events() if e.get("msg") in ("role: expert", "role: router")]

    # fetch assembles the diffusers-style folder, and it samples
    out = root / "ensemble"
    r = cli("fetch", "--initial-peers-file", peers_file, "--out", str(out), "--router-mode", "caption", "--json",
             timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(r.stdout)
    assert manifest["clusters"] == [0, 1] and manifest["missing"] == []
    assert {e["step"] for e in manifest["experts"]} == {TARGET}
    for rel in ("model_index.json", "expert_0/config.json", "expert_0/diffusion_pytorch_model.safetensors",
                "expert_1/config.json", "router/config.json", "text_encoder/config.json", "scheduler",
                "swarm_manifest.json"):
        assert (out / rel).exists(), rel
    from expert.pipeline import ParisPipeline

    pipe = ParisPipeline.from_pretrained(out)
    assert pipe.router_mode == "caption"  # fetch --router-mode: the folder's default instead of the router's joint
    videos = pipe("a red square moving left", strategy="top1", num_inference_steps=2, output_type="uint8").frames
    assert videos.shape[0] == 1 and videos.dtype.name == "uint8"

    # SIGTERM: a clean exit within 30 s that releases what it holds and removes node.json
    for d in (boot, w3):
        d.proc.send_signal(signal.SIGTERM)
    for d in (boot, w3):
        assert d.wait_exit(30) == 0
    assert not (root / "boot" / "node.json").exists()


def test_metrics_then_sighup_mid_training_publishes_a_final_checkpoint_and_releases(swarm):
    """A training daemon's Prometheus endpoint says what it does; a closed terminal (SIGHUP) stops the daemon
    like SIGTERM (which the test above sends)."""
    from prometheus_client.parser import text_string_to_metric_families

    root, start = swarm
    solo = start("solo", *common(target=100000), "--no-gossip", "--metrics-port", "0")
    solo.wait_for(lambda e: e.get("msg", "").startswith("training expert-"), 240, "training starts")
    published = solo.wait_for(lambda e: e.get("msg", "").startswith("published expert-"), 240, "a first checkpoint")
    time.sleep(3)
    url = json.loads((root / "solo" / "node.json").read_text())["metrics"]
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    slot = published["msg"].split()[1]
    assert samples[("paris_training_step", (("slot", slot),))] >= EVERY
    assert samples[("paris_training_target_steps", (("slot", slot),))] == 100000
    assert samples[("paris_training_samples_per_second", (("slot", slot),))] > 0
    assert samples[("paris_checkpoint_publish_seconds_count", (("slot", slot),))] >= 1
    assert samples[("paris_checkpoint_published_bytes_total", (("slot", slot),))] >= published["bytes"]
    val_losses = [e["val_loss"] for e in solo.events() if e.get("msg") == published["msg"]]
    assert min(abs(samples[("paris_validation_loss", (("slot", slot),))] - v) for v in val_losses) < 1e-5
    assert samples[("paris_cluster", (("lane", "0"),))] == int(slot.split("-")[1])
    assert samples[("paris_content_store_bytes", ())] > 0
    info = next(dict(labels) for (name, labels) in samples if name == "paris_node_info")
    assert info["role"] == "expert" and info["run_id"] and info["peer_id"]
    st_before = status(root / "solo")
    training = [s for s in st_before["slots"] if s["state"] == "training"]
    assert len(training) == 1
    t0 = time.monotonic()
    solo.proc.send_signal(signal.SIGHUP)
    assert solo.wait_exit(30) == 0
    assert time.monotonic() - t0 < 30
    events = solo.events()
    stop_at = next(i for i, e in enumerate(events) if e.get("msg", "").startswith("stopping"))
    final = [e for e in events[stop_at:] if e.get("msg", "").startswith("published expert-")]
    assert final, "no checkpoint published after the stop request"


def _pty_screen(args: list[str], want: tuple[str, ...], timeout: float = 120) -> str:
    """Run a command in a pseudo-terminal until its screen shows every word in `want` (then stop it)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: become the command
        os.chdir(ROOT)
        os.execve(CLI[0], [*CLI, *args], {**ENV, "TERM": "xterm-256color"})
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                text = buf.decode(errors="replace")
                if all(w in text for w in want):
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    return buf.decode(errors="replace")
