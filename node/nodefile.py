"""`HOME/node.json`: how scripts and compose files find a running daemon (peer id, dialable addresses, run,
pid). Written atomically whenever it changes; removed on a clean exit."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from protocol.atomic import atomic_write_bytes
from protocol.canonical import canonical_json
from protocol.data import Frozen
from protocol.errors import ParisError
from protocol.records_io import read_model

NODE_FILE = "node.json"


class NodeInfo(Frozen):
    peer_id: str
    maddrs: tuple[str, ...]
    gossip_maddrs: tuple[str, ...] = ()
    run_id: str | None = None
    role: str = "starting"
    cluster: int | None = None
    pid: int = Field(ge=1)
    started_at: float
    join_command: str | None = None
    metrics: str | None = None  # the Prometheus endpoint's URL, when --metrics-port is given


def write_node_info(home: Path, info: NodeInfo) -> Path:
    path = Path(home) / NODE_FILE
    atomic_write_bytes(path, canonical_json(info))
    return path


def read_node_info(path: Path) -> NodeInfo:
    path = Path(path)
    if path.is_dir():
        path = path / NODE_FILE
    return read_model(NodeInfo, path, what="node file")


def peers_from_file(path: Path, timeout: float = 0.0) -> list[str]:
    """The dialable multiaddrs in a node.json (or a home directory holding one), waiting up to `timeout`
    seconds for it to appear (a compose worker starting before its bootstrap has written it)."""
    path = Path(path)
    target = path / NODE_FILE if path.is_dir() or not path.suffix else path
    deadline = time.monotonic() + timeout
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not target.is_file():
        raise ParisError(f"no node file at {target} (is the node it describes running?)")
    info = read_node_info(target)
    if not info.maddrs:
        raise ParisError(f"node file {target} lists no addresses")
    return list(info.maddrs)


def remove_node_info(home: Path) -> None:
    """Remove our node file, but only if it is still ours (a newer daemon may have replaced it)."""
    path = Path(home) / NODE_FILE
    try:
        if read_node_info(path).pid == os.getpid():
            path.unlink()
    except (ParisError, OSError):
        pass
