"""Who checks which checkpoint, and which intervals get replayed: pure functions over a verifier's own secret
and what it sees, so that a trainer, who controls its CID, its timestamps and its identities, can neither
foresee nor steer either choice.

Each verifier draws two numbers per CID with a key only it holds (`draw`: HMAC-SHA256 keyed by a secret
derived from its private key, so a restarted node draws the same again):

- **assignment** (`assigned`): it checks a CID when its draw is under `share(...)`, which is `wanted /
  eligible` (the quorum plus a margin, spread over the verifiers that could check it), doubled for every
  `patience` seconds that the CID has waited since *this verifier* first saw it (never the record's own
  timestamp, which its trainer writes). About `wanted` verifiers check each checkpoint whatever V is, and one
  whose drawn checkers are gone, busy, or Sybils that never attest is checked by every verifier in the end;
- **replay** (`replays`): of the intervals it checks, it replays those whose second draw is under
  `1 / (replay_every · c)`, where c = min(wanted, eligible) is how many verifiers check each interval: the
  swarm replays about one interval in `replay_every` in all, so replays cost about 1/`replay_every` of the
  training compute whatever the number of verifiers. Re-rolling a CID changes draws that the trainer cannot
  compute, so grinding gains nothing; different verifiers replay different intervals.

An interval checked by c verifiers that do not collude with its trainer is replayed by at least one of them
with probability `detection_probability(replay_every, c)` = 1 − (1 − 1/(replay_every · c))^c, which is
1/replay_every for one checker and a little less for more (about 0.096 for c = 3 at replay_every = 10).
`replay_every` = 1 is full cover: every checker replays every interval (detection 1, c replays per interval).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

_SCALE = float(2**64)


def verifier_secret(private_key_der: bytes) -> bytes:
    """The key of a node's draws: derived from its private key (never published, the same after a restart)."""
    return hashlib.sha256(b"paris-node/verify-plan/v1|" + private_key_der).digest()


def draw(secret: bytes, purpose: str, cid: str) -> float:
    """A uniform number in [0, 1) that only the holder of `secret` can compute for (`purpose`, `cid`)."""
    mac = hmac.new(secret, f"{purpose}|{cid}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") / _SCALE


def share(wanted: int, eligible: int, waited: float, patience: float) -> float:
    """The probability that one verifier checks a CID: `wanted` of the `eligible` verifiers (all of them when
    there are no more than `wanted`), doubled for every `patience` seconds the CID has waited unchecked."""
    if eligible <= wanted or wanted <= 0:
        return 1.0
    boost = 2.0 ** (max(waited, 0.0) / patience) if patience > 0 else 1.0
    return min(1.0, wanted / eligible * boost)


def replay_rate(replay_every: int, checkers: int = 1) -> float:
    """One verifier's chance of replaying an interval it checks, when `checkers` verifiers check each.
    `replay_every` = 1 asks for full cover: every checker replays every interval it checks (c times the
    replays of the spread rate, and a forged interval is caught for sure by any honest checker)."""
    if replay_every <= 0:
        return 0.0
    return 1.0 if replay_every == 1 else 1.0 / (replay_every * max(checkers, 1))


def detection_probability(replay_every: int, checkers: int) -> float:
    """The chance that at least one of `checkers` independent verifiers replays a given interval."""
    return 1.0 - (1.0 - replay_rate(replay_every, checkers)) ** max(checkers, 0)


@dataclass(frozen=True)
class VerifyPlan:
    """One verifier's keyed choices for a run: `wanted` checkers per checkpoint (the quorum plus a margin),
    `replay_every` (the run's rate), `patience` (seconds after which an unchecked CID's share doubles)."""

    secret: bytes
    wanted: int
    replay_every: int
    patience: float

    def assigned(self, cid: str, eligible: int, waited: float) -> bool:
        return draw(self.secret, "check", cid) < share(self.wanted, eligible, waited, self.patience)

    def start_delay(self, cid: str, eligible: int, spread: float) -> float:
        """Seconds after first seeing `cid` before this verifier starts checking it: its draw over the share of
        one verifier, times `spread`. The eligible verifiers start one after another, about `spread / wanted`
        apart, in an order nobody else can compute; each skips a CID that by then has what the rule needs
        (swarm.layout.attestation_needed), so about the quorum download and check each checkpoint whatever
        the number of verifiers, and one whose first checkers are gone or silent is picked up by the next."""
        return spread * draw(self.secret, "check", cid) / share(self.wanted, eligible, 0.0, self.patience)

    def checkers(self, eligible: int) -> int:
        """How many verifiers check each checkpoint, about: `wanted`, or every eligible one if fewer."""
        return max(1, min(self.wanted, eligible))

    def replays(self, cid: str, eligible: int) -> bool:
        return draw(self.secret, "replay", cid) < replay_rate(self.replay_every, self.checkers(eligible))
