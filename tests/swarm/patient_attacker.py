"""A patient attacker for the trust tests (issue 29): a real process running our own client code under
identities of its own, each aiming just inside a rule as it was before the fix. It prints one JSON line per act
and serves its content until sent {"op": "quit"} on stdin (or 15 minutes pass).

Identities: `squat` (leases and records that claim progress), `copier` (never holds a lease), `minter` (only
attests). Acts, in order:
  future      a checkpoint record at step 10^6 dated a year ahead (every validator should refuse it)
  dangling    per expert: a record at step 10^6 naming a parent nobody announced, plus a lease on the cluster
  lanes       15 leases of one identity (lanes 1-15) dated 10,000 s back, to drag honest clocks
  unfetchable per expert: 8 step-1 records whose CIDs nobody serves, ahead of every honest checkpoint
  copies      once expert-0's first checkpoint is accepted: copies of it (no training) at steps +10 … +100,
              each re-rolled until the old CID-hash replay rule said "no replay"
  minted      with --mint-replays N: replay-backed rejects of the first N honest checkpoints of expert 1
  minted-head on {"op": "mint", "slot": S} (stdin): a replay-backed reject of the slot's accepted head
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import tempfile
import time
from pathlib import Path

from hivemind.utils.timed_storage import get_dht_time

from expert.checkpoint import read_group, read_meta, resolve_checkpoint, write_checkpoint
from node.bundle import fetch_run, resolve_run_id
from node.nodefile import peers_from_file
from protocol.swarm_cas import path_cid
from protocol.swarm_records import AttestationBody, CheckpointBody, ClaimBody, ClaimState, run_key
from swarm.cas import ContentStore
from swarm.dht import NetworkConfig, SwarmNode
from swarm.state import publish_attestation, publish_checkpoint, read_run, record_key
from tests.swarm.attacker import parser, serve_until_quit

HUGE = 10**6


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


def old_should_replay(cid: str, replay_every: int) -> bool:
    """The rule this attacker grinds against (it hashed the CID, which the trainer chooses)."""
    return replay_every > 0 and int.from_bytes(hashlib.sha256(cid.encode()).digest()[:8], "big") % replay_every == 0


def fake_cid() -> str:
    return "bafkrei" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(52))


async def main(args) -> None:
    peers = peers_from_file(args.peers_file, timeout=60)
    net = NetworkConfig(initial_peers=tuple(peers))
    squat, copier, minter = [await asyncio.to_thread(SwarmNode.start, Path(args.home) / name, net)
                             for name in ("squat", "copier", "minter")]
    store = ContentStore(copier, Path(args.home) / "copier" / "store")
    await store.start()
    run_id = await resolve_run_id(copier, None)
    run = await fetch_run(copier, store, run_id)
    spec, schedule = run.spec, run.manifest.schedule
    k = spec.num_clusters
    say(act="ready", squat=squat.peer_id, copier=copier.peer_id, minter=minter.peer_id, run_id=run_id)
    ours = {squat.peer_id, copier.peer_id, minter.peer_id}
    lies: list[str] = []

    now = get_dht_time()
    future = CheckpointBody(slot="expert-0", step=HUGE, cid=fake_cid(), bytes=10, val_loss=0.01,
                            ts=now + 365 * 86400)
    say(act="future", stored=await publish_checkpoint(squat, run_id, future))

    for c in range(k):
        body = CheckpointBody(slot=f"expert-{c}", step=HUGE, cid=fake_cid(), bytes=10, parent=fake_cid(),
                              val_loss=0.01, ts=now)
        assert await publish_checkpoint(squat, run_id, body)
        lies.append(body.cid)
        lease = ClaimBody(cluster=c, state=ClaimState.TRAINING, peer_id=squat.peer_id, since=now, ts=now,
                          lane=c or None)
        await squat.put(run_key(run_id, "claims"), lease, now + 600)
    say(act="dangling", cids=lies[-k:])

    old = now - 10_000
    for lane in range(1, 16):
        lease = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=copier.peer_id, since=old, ts=old, lane=lane)
        await copier.put(run_key(run_id, "claims"), lease, now + 900)
    say(act="lanes", count=15)

    for c in range(k):
        for _ in range(8):
            body = CheckpointBody(slot=f"expert-{c}", step=1, cid=fake_cid(), bytes=1000, parent=None, val_loss=1.0,
                                  ts=get_dht_time())
            assert await publish_checkpoint(squat, run_id, body)
            lies.append(body.cid)
    say(act="unfetchable", count=8 * k)

    work = Path(tempfile.mkdtemp(prefix="patient-", dir=args.home))
    deadline = time.monotonic() + 400
    root, copies, minted = None, [], []
    while time.monotonic() < deadline and (root is None or len(minted) < args.mint_replays):
        view = await read_run(copier, run_id, k, rules=run.rules)
        if root is None:
            first = [c for c in view.accepted_checkpoints("expert-0") if c.parent is None]
            if first:
                root = first[0]
                path = resolve_checkpoint(await store.get(root.cid, expected_bytes=root.bytes))
                meta = read_meta(path)
                stems = [f.file.removesuffix(".safetensors") for f in meta.files]
                groups = {stem: read_group(path, meta, stem) for stem in stems}
                parent, tries = root.cid, 0
                for i in range(1, 11):
                    fields = meta.model_dump(exclude={"files", "created_at", "format_version"})
                    fields.update(preset=meta.preset, step=root.step + 10 * i, parent=parent)
                    updates = float(fields["step"] - meta.skipped_steps)  # counters that pass the load check
                    groups["optimizer"] = {n: t.clone().fill_(updates) if n.endswith(".step") else t
                                           for n, t in groups["optimizer"].items()}
                    while True:  # re-roll the CID (created_at) until the old rule says "no replay"
                        out = work / f"copy-{i}-{tries}"
                        write_checkpoint(out, groups, fields)
                        tries += 1
                        if not old_should_replay(path_cid(out), schedule.replay_every):
                            break
                    cid = await store.put(out)
                    size = sum(f.stat().st_size for f in out.iterdir())
                    body = CheckpointBody(slot="expert-0", step=root.step + 10 * i, cid=cid, bytes=size,
                                          parent=parent, val_loss=root.val_loss, ts=get_dht_time())
                    assert await publish_checkpoint(copier, run_id, body)
                    copies.append(cid)
                    parent = cid
                say(act="copies", cids=copies, tries=tries, root=root.cid)
        honest = sorted((c for peer, c in view.checkpoints if peer not in ours and c.slot == "expert-1"
                         and not c.replica and c.cid not in minted), key=lambda c: c.step)
        for c in honest[: args.mint_replays - len(minted)]:
            att = AttestationBody(slot=c.slot, cid=c.cid, step=c.step, parent=c.parent, val_loss=c.val_loss,
                                  verdict="reject", reason="replay differs by 0.9 of the update", replayed=True,
                                  replay_exact=False, ts=get_dht_time())
            if await publish_attestation(minter, run_id, att):
                minted.append(c.cid)
        await asyncio.sleep(2)
    say(act="minted", cids=minted)

    async def command(cmd: dict) -> None:
        """{"op": "mint", "slot": S}: a failed replay of each of the slot's accepted heads, minted once the run is
        over (when its trainer no longer trains the slot and readers have only the head and its parent to go on).
        Every head at the slot's last step: a takeover can leave two lineages there (and before swarm.acceptance
        held a disputed head PENDING for a node that had checked its content, this very mint made such a node
        take the finished slot and train its last interval again)."""
        if cmd.get("op") != "mint":
            return
        view = await read_run(minter, run_id, k, rules=run.rules)
        accepted = view.accepted_checkpoints(cmd["slot"])
        heads = [c for c in accepted if c.step == accepted[0].step]
        stored_all = True
        for head in heads:
            att = AttestationBody(slot=head.slot, cid=head.cid, step=head.step, parent=head.parent,
                                  val_loss=head.val_loss, verdict="reject",
                                  reason="replay differs by 0.7 of the update", replayed=True, replay_exact=False,
                                  ts=get_dht_time())
            # the lie is stored on every replica before it is announced: a reader that looks right after must find
            # it (returning at the first replica, as honest writes do, left it on our own nodes in a loaded run)
            stored = False
            for _ in range(3):
                stored = await minter.put(record_key(run_id, att), att, get_dht_time() + minter.record_ttl,
                                          all_replicas=True)
                if stored:
                    break
            stored_all = stored_all and stored
        say(act="minted-head", cids=[h.cid for h in heads], step=heads[0].step, stored=stored_all)

    await serve_until_quit(on_command=command)
    await store.close()
    for node in (squat, copier, minter):
        node.shutdown()


if __name__ == "__main__":
    asyncio.run(main(parser(interval=10, mint_replays=0).parse_args()))
