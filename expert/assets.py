"""Where this machine keeps a run's model assets (a VAE folder, text-encoder weights), found by their CIDs.

A preset names its assets by CID only (protocol.model.Asset), so that the run id commits to their bytes and a
joiner anywhere builds the same model. This process learns where each one lies on its disk when it has been
verified: fetched from the content store (every chunk checked against the CID), imported from a local folder
(its CID computed here), or read from an ensemble folder whose files `model_index.json` hashes. Building a
codec or a text tower asks for the path; an asset nobody registered is a one-line error naming it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from protocol.errors import IntegrityError, ParisError
from protocol.model import Asset
from protocol.swarm_cas import DEFAULT_CHUNK_SIZE, path_manifest

_lock = threading.Lock()
_paths: dict[str, Path] = {}


def register_asset(asset: Asset, path: Path | str) -> None:
    """Say that `path` holds `asset` (already verified by the caller)."""
    path = Path(path)
    if not path.exists():
        raise ParisError(f"{path} does not exist")
    with _lock:
        _paths[asset.cid] = path


def registered() -> dict[str, Path]:
    """Every asset this process knows the path of, by CID (what a DDP rank is told: expert.ddp)."""
    with _lock:
        return dict(_paths)


def register_paths(paths: dict[str, Path]) -> None:
    """Take over another process's `registered()` (paths it verified on this same machine)."""
    with _lock:
        _paths.update({cid: Path(p) for cid, p in paths.items()})


def asset_path(asset: Asset, what: str) -> Path:
    """The local path of `asset`; `what` names it in the error (e.g. "video VAE")."""
    with _lock:
        path = _paths.get(asset.cid)
    if path is None or not path.exists():
        raise ParisError(f"the {what} {asset.name} ({asset.cid}) is not on this machine: fetch the run's assets "
                         "(joining the run or `paris-node fetch` does), or give its local path")
    return path


def asset_of(path: Path | str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Asset:
    """The Asset a local file or folder is (its CID as the content store computes it), registered here."""
    path = Path(path).expanduser()
    if not (path.is_file() or path.is_dir()):
        raise ParisError(f"{path}: no such file or folder")
    try:
        manifest = path_manifest(path, chunk_size)
    except (OSError, IntegrityError) as e:
        raise ParisError(f"cannot read {path}: {e}") from None
    asset = Asset(cid=manifest.cid, bytes=max(manifest.total_bytes, 1), name=path.name)
    register_asset(asset, path)
    return asset
