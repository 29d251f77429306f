"""What the hostile-peer scripts (evil_trainer.py, squatter.py) share: their command line and the wait that
keeps them serving (and renewing) until the test sends {"op": "quit"} on stdin. Bounded: 15 minutes at most."""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import sys
import time


def parser(**extra: int) -> argparse.ArgumentParser:
    """`--peers-file` (a node.json to dial), `--home` (where its identities live), plus int options `extra`."""
    p = argparse.ArgumentParser()
    p.add_argument("--peers-file", required=True)
    p.add_argument("--home", required=True)
    for name, default in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return p


async def serve_until_quit(seconds: float = 900.0, on_command=None) -> None:
    """Serve until {"op": "quit"} (or `seconds`); any other JSON line goes to `on_command` (an async callable)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = await asyncio.to_thread(select.select, [sys.stdin], [], [], 1.0)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line or "quit" in line:
            return
        if on_command is not None:
            await on_command(json.loads(line))
