"""A snapshot of what one daemon is doing, over every lane: what the metrics endpoint and node.json read, so
neither reaches into the daemon (and `--gpu 0,1` shows both devices' training)."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict


class LaneStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    index: int
    device: str
    role: str
    cluster: int | None = None
    slot: str | None = None  # what its driver trains now
    step: int | None = None
    target: int | None = None
    samples_per_s: float | None = None
    loss: float | None = None


class NodeStatus(BaseModel):
    model_config = ConfigDict(frozen=True)
    peer_id: str = ""
    run_id: str = ""
    lanes: tuple[LaneStatus, ...] = ()
    served_bytes: int = 0
    fetched_bytes: int = 0
    store_bytes: int | None = None
    peers_seen: int = 0
    verdicts: dict[str, int] = {}  # verdict → checkpoints this node attested with it

    @property
    def role(self) -> str:
        """The node's role: its lanes' roles, joined (one lane: that lane's)."""
        return ",".join(lane.role for lane in self.lanes) if self.lanes else "starting"

    @property
    def cluster(self) -> int | None:
        """The cluster the first lane holds."""
        return self.lanes[0].cluster if self.lanes else None


def lane_status(lane) -> LaneStatus:
    """A node.lane.Lane's status now (its driver's newest progress, when it trains)."""
    import math

    driver, slot = lane.driver, lane.current_slot
    p = driver.latest if driver is not None and slot is not None else None

    def finite(x) -> float | None:
        return float(x) if x is not None and math.isfinite(x) else None

    return LaneStatus(index=lane.index, device=str(lane.device), role=lane.role, cluster=lane.cluster,
                      slot=slot if p is not None else None, step=None if p is None else p.step,
                      target=None if p is None else driver.target,
                      samples_per_s=None if p is None else finite(p.samples_per_s),
                      loss=None if p is None else finite(p.loss_ema))


def tally(attested) -> dict[str, int]:
    """verdict → count over a verifier's attestations."""
    return dict(Counter(a.verdict for a in attested))
