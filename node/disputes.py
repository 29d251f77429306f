"""Settling a contested replay where a reader stands: a failed replay is decisive in the acceptance rule
(swarm.acceptance, rule 3), so identities minted to publish failed replays of honest checkpoints make every
reader that did not replay them fall back to older ones. Where another verifier's replay of the same CID
matched (`contested_replays`), one side lied, and a replay here tells which: it is deterministic, and this
node's own replay outweighs any number of votes. Bounded by `budget` replays, so a flood of disputes costs
the reader at most that; past it the reader keeps the strict view (older checkpoints), and says so."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from node.checker import CheckpointChecker
from node.logs import event
from protocol.swarm_records import CheckpointBody
from swarm.acceptance import contested_replays, known_facts
from swarm.state import RunView

log = logging.getLogger("node.disputes")


@dataclass(frozen=True)
class Settled:
    """One contested interval this node tried to replay, and the outcome: "matched" (the failed replay was a
    lie: the checkpoint counts here), "failed" (it failed here too), or "unfetchable" (nobody served it or its
    parent: nothing learnt, the strict view stands)."""

    slot: str
    step: int
    cid: str
    outcome: str
    reason: str = ""

    def as_dict(self) -> dict:
        return {"slot": self.slot, "step": self.step, "cid": self.cid, "outcome": self.outcome,
                "reason": self.reason or None}


def next_dispute(view: RunView, slot: str, tried: set[str]) -> CheckpointBody | None:
    """The oldest contested claim of `slot` past its accepted head that this node has not replayed yet: the
    one whose settling can move what a consumer of the slot uses (an older one changes nothing)."""
    if view.rules is None:
        raise ValueError("settling disputes needs the run's rules")
    head = view.accepted_checkpoints(slot)
    head_step = head[0].step if head else -1
    claims = contested_replays(view.judged(slot), view.slot_votes(slot), view.rules.for_slot(slot))
    for claim in claims:
        if claim.step <= head_step or claim.cid in tried:
            continue
        body = next((c for peer, c in view.checkpoints if c.cid == claim.cid and peer == claim.trainer
                     and c.slot == slot and not c.replica), None)
        if body is not None:
            return body
    return None


async def settle_disputes(view: RunView, slots: list[str], checker: CheckpointChecker,
                          training_data: Callable[[str], Awaitable[tuple]], *, budget: int
                          ) -> tuple[RunView, list[Settled], list[str]]:
    """Replay up to `budget` contested intervals of `slots` here; returns the view judged with this node's own
    checks and replays, what was replayed, and the slots whose disputes the budget left unsettled."""
    settled: list[Settled] = []
    tried: set[str] = set()
    left: list[str] = []
    for slot in slots:
        while (body := next_dispute(view, slot, tried)) is not None:
            if len(settled) >= budget:
                left.append(slot)
                break
            tried.add(body.cid)
            event(log, f"replaying contested {slot} checkpoint", step=body.step, cid=body.cid)
            check = await checker.check(body, known_facts(view.judged(slot)))
            if check.ok:
                result = await checker.replay(body, *await training_data(slot))
                ok, why = result.ok, result.reason
            else:
                ok, why = False, check.reason
            outcome = "matched" if ok else "unfetchable" if why.startswith("not fetchable") else "failed"
            event(log, f"contested {slot} checkpoint: {outcome}", step=body.step, cid=body.cid, reason=why or None)
            settled.append(Settled(slot, body.step, body.cid, outcome, why))
            view = replace(view, local=tuple(sorted(checker.verdicts.items())))
    return view, settled, left
