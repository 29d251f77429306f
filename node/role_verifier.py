"""The verifier role: the swarm's surplus volunteers check newly announced checkpoints and publish signed
attestations. A check fetches the checkpoint, loads it into a trainer of its slot (hashes, run, cluster,
kind, preset), compares the step and parent with the record, checks finiteness and recomputes the run's
validation loss on the held-out clips. One interval in `replay_every` (chosen by the CID's hash, so every
verifier replays the same ones) is also re-trained from its parent and compared weight for weight."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from hivemind.utils.timed_storage import get_dht_time

from node.checker import slot_cluster
from node.logs import event
from node.role_seeder import slots
from protocol.swarm_records import AttestationBody, CheckpointBody
from swarm.state import RunView, publish_attestation

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("node.verifier")

PER_SLOT_PER_ROUND = 4  # a flood of announcements cannot keep a verifier from its other slots


def should_replay(cid: str, replay_every: int) -> bool:
    """Whether this interval is one of the `1/replay_every` that verifiers replay (the same on every node)."""
    return replay_every > 0 and int.from_bytes(hashlib.sha256(cid.encode()).digest()[:8], "big") % replay_every == 0


def to_verify(view: RunView, me: str, slot: str) -> list[CheckpointBody]:
    """Trainers' records of `slot` that we have not attested yet and did not train ourselves, newest first."""
    mine = {a.cid for peer, a in view.attestations if peer == me}
    seen, out = set(), []
    for peer, c in sorted(view.checkpoints, key=lambda pc: (pc[1].step, pc[1].ts), reverse=True):
        if c.slot == slot and not c.replica and peer != me and c.cid not in mine and c.cid not in seen:
            seen.add(c.cid)
            out.append(c)
    return out[:PER_SLOT_PER_ROUND]


async def _attest(d: Daemon, slot: str, body: CheckpointBody, schedule) -> AttestationBody | None:
    """Check one checkpoint (and replay it when its turn comes); None when it could not be fetched yet."""
    result = await d.checker.check(body)
    if result.reason.startswith("not fetchable"):
        return None  # not a verdict: try again next round
    replayed, exact = False, None
    cluster = slot_cluster(slot)
    if result.ok and cluster is not None and should_replay(body.cid, schedule.replay_every):
        from node.bundle import fetch_cluster_clips

        clips = await fetch_cluster_clips(d.store, d.run_info, cluster)
        replay = await d.checker.replay(body, clips)
        replayed, exact = True, replay.replay_exact
        if not replay.ok:
            result = replay
    found = result.step is not None
    return AttestationBody(slot=slot, cid=body.cid, step=result.step if found else body.step,
                           parent=result.parent if found else body.parent, val_loss=result.val_loss,
                           verdict="accept" if result.ok else "reject", reason=result.reason[:300],
                           replayed=replayed, replay_exact=exact, ts=get_dht_time())


async def verify_round(d: Daemon, view: RunView) -> int:
    """Check what is new in every slot and publish one attestation per checkpoint. Returns how many."""
    assert d.node is not None and d.run_info is not None
    schedule = d.run_info.manifest.schedule
    done = 0
    for slot in slots(d.run_info.spec.num_clusters):
        for body in to_verify(view, d.node.peer_id, slot):
            if d.stopping.is_set():
                return done
            try:
                att = await _attest(d, slot, body, schedule)
            except Exception:  # a hostile checkpoint must never stop a verifier: log, skip, retry next round
                log.exception("checking %s step %d (%s) failed", slot, body.step, body.cid)
                continue
            if att is None:
                continue
            await publish_attestation(d.node, d.run_info.spec.run_id, att)
            done += 1
            event(log, f"attested {slot} checkpoint", step=body.step, cid=body.cid, verdict=att.verdict,
                  val_loss=None if att.val_loss is None else round(att.val_loss, 6), replayed=att.replayed,
                  replay_exact=att.replay_exact, reason=att.reason or None)
    return done
