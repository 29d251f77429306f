"""The verifier role: the swarm's surplus volunteers check newly announced checkpoints and publish signed
attestations. A check fetches the checkpoint (bounded by what the slot can hold), loads it into a trainer of
its slot (hashes, run, cluster, kind, preset), checks finiteness, recomputes the run's validation loss on the
held-out clips and checks that the step and loss can follow the checkpoint's own parent (or the
initialisation). The attestation judges that content and states what was found inside (step, parent, loss),
so the acceptance rule can contradict a record that misstates it. One interval in `replay_every` (chosen by
the CID's hash, so every verifier replays the same ones) is also re-trained from its parent and compared
weight for weight."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from hivemind.utils.timed_storage import get_dht_time

from node.checker import slot_cluster
from node.logs import event
from node.role_seeder import slots
from protocol.swarm_records import AttestationBody, CheckpointBody, run_key
from swarm.acceptance import known_facts
from swarm.state import RunView, publish_attestation

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("node.verifier")

PER_SLOT_PER_ROUND = 8  # a flood of announcements cannot keep a verifier from its other slots


def should_replay(cid: str, replay_every: int) -> bool:
    """Whether this interval is one of the `1/replay_every` that verifiers replay (the same on every node)."""
    return replay_every > 0 and int.from_bytes(hashlib.sha256(cid.encode()).digest()[:8], "big") % replay_every == 0


def to_verify(view: RunView, me: str, slot: str, done: set[str] | frozenset[str] = frozenset()
              ) -> list[CheckpointBody]:
    """Trainers' records of `slot` whose CID we have not attested yet (nor checked: `done`) and did not train
    ourselves, on the lineage frontier: the parent is the initialisation, or a checkpoint we checked or that is
    accepted. Oldest first, so an honest chain becomes accepted from its root up (nothing is accepted until its
    parent is), and claims with a dangling lineage cost no verification (the rule never accepts them).
    Accepted checkpoints that an accepted descendant supersedes are left out: what consumers use is the
    newest accepted one, so a newcomer to a long (or finished) run checks that, not its whole history."""
    mine = {a.cid for peer, a in view.attestations if peer == me} | set(done)
    accepted = view.accepted_checkpoints(slot)
    known = mine | {c.cid for c in accepted}
    superseded = {c.cid for c in accepted} - ({accepted[0].cid} if accepted else set())
    seen, out = set(), []
    for peer, c in sorted(view.checkpoints, key=lambda pc: (pc[1].step, pc[1].ts)):
        if (c.slot == slot and not c.replica and peer != me and c.cid not in mine and c.cid not in seen
                and c.cid not in superseded and (c.parent is None or c.parent in known)):
            seen.add(c.cid)
            out.append(c)
            known.add(c.cid)  # its children may follow in the same round, after it
    return out[:PER_SLOT_PER_ROUND]


async def _attest(d: Daemon, slot: str, body: CheckpointBody, schedule, parents) -> AttestationBody | None:
    """Check one checkpoint (and replay it when its turn comes); None when it could not be fetched yet."""
    result = await d.checker.check(body, parents)
    if result.reason.startswith("not fetchable"):
        if body.cid not in d.unfetchable:  # said once per CID: a verifier that waits says what it waits for
            d.unfetchable.add(body.cid)
            log.info("cannot check %s step %d (%s) yet: %s; retrying next round", slot, body.step, body.cid,
                     result.reason)
        return None  # not a verdict: try again next round
    replayed, exact = False, None
    cluster = slot_cluster(slot)
    if result.content_ok and cluster is not None and should_replay(body.cid, schedule.replay_every):
        from node.bundle import fetch_cluster_clips

        clips = await fetch_cluster_clips(d.store, d.run_info, cluster)
        replay = await d.checker.replay(body, clips)
        replayed, exact = True, replay.replay_exact
        if not replay.ok:
            result = replace(replay, step=result.step, parent=result.parent, val_loss=result.val_loss)
    # the verdict is about the checkpoint itself, with what was found inside: a record that misstates an honest
    # checkpoint (another step, parent or loss) is contradicted by these facts under the acceptance rule,
    # without a reject that would also count against the honest record of the same CID
    found = result.step is not None
    good = result.content_ok  # a failed replay clears it
    return AttestationBody(slot=slot, cid=body.cid, step=result.step if found else body.step,
                           parent=result.parent if found else body.parent, val_loss=result.val_loss,
                           verdict="accept" if good else "reject", reason="" if good else result.reason[:300],
                           replayed=replayed, replay_exact=exact, ts=get_dht_time())


async def verify_round(d: Daemon, view: RunView) -> int:
    """Check what is new in every slot and publish one attestation per checkpoint. Returns how many."""
    assert d.node is not None and d.run_info is not None
    schedule = d.run_info.manifest.schedule
    done = 0
    run_id = d.run_info.spec.run_id
    visible = {a.cid for peer, a in view.attestations if peer == d.node.peer_id}
    for cid, att in list(d.attested.items())[-64:]:  # a write that no peer stored is retried, not redone
        if cid not in visible:
            await publish_attestation(d.node, run_id, att.model_copy(update={"ts": get_dht_time()}))
    for slot in slots(d.run_info.spec.num_clusters):
        parents = known_facts(view.judged(slot))
        for body in to_verify(view, d.node.peer_id, slot, set(d.attested)):
            if d.stopping.is_set():
                return done
            try:
                att = await _attest(d, slot, body, schedule, parents)
            except Exception:  # a hostile checkpoint must never stop a verifier: log, skip, retry next round
                log.exception("checking %s step %d (%s) failed", slot, body.step, body.cid)
                continue
            if att is None:
                continue
            d.attested[body.cid] = att
            if await publish_attestation(d.node, run_id, att):
                d.own_records.add(run_key(run_id, "attestations"), att)
            done += 1
            event(log, f"attested {slot} checkpoint", step=body.step, cid=body.cid, verdict=att.verdict,
                  val_loss=None if att.val_loss is None else round(att.val_loss, 6), replayed=att.replayed,
                  replay_exact=att.replay_exact, reason=att.reason or None)
    return done
