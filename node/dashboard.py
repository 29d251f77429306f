"""Draws a SwarmStatus as a rich renderable: the run, the peers, a row per cluster and the router, recent events."""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from node.swarm_view import SwarmStatus

_STATE_STYLE = {"free": "dim", "joining": "yellow", "training": "green", "verifying": "cyan", "done": "bold cyan",
                "offline": "red", "stalled": "bold red"}


def _count(n: int) -> str:
    """1234 → 1.2k, 5600000 → 5.6M: totals read at a glance."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _short(text: str | None, n: int = 12) -> str:
    if not text:
        return "-"
    return text if len(text) <= n + 1 else f"{text[:4]}…{text[-(n - 5):]}"


def render(status: SwarmStatus) -> Group:
    head = Text.assemble(
        ("run ", "bold"), (status.run_id, "bold magenta"),
        f"  {status.name or ''}  K={status.num_clusters}  preset={status.preset or '?'}  clips={status.clips or '?'}"
        f"  target={status.target_steps or '?'} steps (router {status.router_target_steps or '?'})\n",
        ("progress ", "bold"), _bar(status.progress), f" {status.progress * 100:.1f}%   ",
        ("peers online ", "bold"), str(len(status.peers)),
        ("   eta ", "bold"), _age(status.eta_s) if status.eta_s is not None else "?",
    )
    table = Table(expand=True, header_style="bold", pad_edge=False)
    for col in ("slot", "state", "owner", "step/target", "eta", "verified/claimed", "loss", "", "samples/s",
                "checkpoint", "age", "peers"):
        table.add_column(col, no_wrap=True, overflow="ellipsis",
                         min_width={"slot": 8, "state": 8, "step/target": 9, "checkpoint": 12}.get(col))
    for r in status.slots:
        step = "-" if r.step is None else f"{r.step}/{r.target or '?'}"
        verified = ("-" if r.verified_step is None else f"{r.verified_step}") + (
            "" if r.claimed_step is None else f"/{r.claimed_step}") + (f" ✓{r.attestations}" if r.attestations else "")
        table.add_row(
            r.slot, Text(r.state, style=_STATE_STYLE.get(r.state, "")), _short(r.owner, 8), step, _age(r.eta_s),
            Text(verified, style="red" if r.rejected else ""),
            "-" if r.loss is None else f"{r.loss:.4f}", Text(sparkline(r.loss_history), style="green"),
            "-" if r.samples_per_s is None else f"{r.samples_per_s:.1f}",
            _short(r.checkpoint_cid, 10) + ("" if r.checkpoint_step is None else f" @{r.checkpoint_step}"),
            _age(r.checkpoint_age_s), str(r.providers),
        )
    peers = Table.grid(padding=(0, 2))
    shown, rest = top_peers(status.peers)
    for p in shown:
        trained = "" if p.samples_trained is None else (
            f"{_count(p.samples_trained)} samples in {p.checkpoints_accepted} accepted checkpoint(s)")
        if p.served_bytes:
            trained += f"{', ' if trained else ''}says it served {_count(p.served_bytes)}B"
        peers.add_row(_short(p.peer_id, 16), p.role, p.software, f"seen {_age(p.age_s)} ago", trained,
                      Text(p.clock_note or "", style="yellow"))
    if rest:
        roles = Counter(p.role for p in rest)
        peers.add_row(f"… {len(rest)} more", ", ".join(f"{n} {r}" for r, n in roles.most_common()), "", "",
                      f"{_count(sum(p.samples_trained or 0 for p in rest))} samples", "")
    feed = Table.grid(padding=(0, 2))
    for e in status.events[-8:]:
        feed.add_row(time.strftime("%H:%M:%S", time.localtime(e.ts)), _short(e.sender), e.type, e.detail)
    parts = [head, table]
    refused = [f"{r.slot} {why}" for r in status.slots for why in r.rejected]
    refused += [f"{r.slot}: {r.note}" for r in status.slots if r.note]
    refused += [f"{r.slot} {c}: a failed replay contradicts another verifier's replay (fetch replays it to decide)"
                for r in status.slots for c in r.contested]
    if refused:
        parts.append(Panel(Text("\n".join(refused[:6]), style="red"), title="needs attention",
                           title_align="left"))
    parts.append(Panel(peers, title="peers", title_align="left"))
    if status.events:
        parts.append(Panel(feed, title="recent events", title_align="left"))
    for f in status.foreign:
        parts.append(Text(f"incompatible peer: {f}", style="yellow"))
    return Group(*parts)


PEER_ROWS = 20  # a dashboard draws a screen, not a swarm: the rest are counted


def top_peers(peers: list, rows: int = PEER_ROWS) -> tuple[list, list]:
    """The peers worth a row (most samples trained, then most recently seen) and the rest, to be counted."""
    ranked = sorted(peers, key=lambda p: (-(p.samples_trained or 0), p.age_s, p.peer_id))
    return ranked[:rows], ranked[rows:]


def sparkline(values: list[float], width: int = 16) -> str:
    """The last `width` values as block characters, scaled between their own min and max."""
    vals = values[-width:]
    if len(vals) < 2:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        return _SPARK[0] * len(vals)
    return "".join(_SPARK[min(len(_SPARK) - 1, int((v - lo) / (hi - lo) * len(_SPARK)))] for v in vals)


_SPARK = "▁▂▃▄▅▆▇█"


def _bar(fraction: float, width: int = 24) -> Text:
    full = round(fraction * width)
    return Text("█" * full + "░" * (width - full), style="green")
