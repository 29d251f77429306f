"""A run's model assets (VAE folder, text-encoder weights, clip-embedding weights) in the content store.

`run init` imports the local files into the home's store (pinned, so the daemon provides them); the run spec
names them by CID and size. Whoever needs one fetches it by that CID, bounded by that size (every chunk is
verified against it), and registers where it lies (expert.assets) so that the model can be built.
"""

from __future__ import annotations

import logging
from pathlib import Path

from expert.assets import asset_of, asset_path, register_asset
from protocol.errors import ParisError
from protocol.model import Asset, ExpertPreset
from protocol.run import RunSpec
from swarm.blobstore import BlobStore
from swarm.cas import ContentStore
from swarm.cas_files import import_path
from swarm.packs import PackStore, PackWriter

log = logging.getLogger(__name__)


def store_root(home: Path) -> Path:
    """The content store of a daemon's home (as node.daemon opens it)."""
    return Path(home) / "store"


def import_asset(home: Path, path: Path | str) -> Asset:
    """Put a local file or folder into `home`'s content store, pinned (kept, and provided once the daemon runs);
    returns the Asset that names it. The bytes are copied: the original may be moved away afterwards."""
    path = Path(path).expanduser()
    if not (path.is_file() or path.is_dir()):
        raise ParisError(f"{path}: no such file or folder")
    blobs, packs = BlobStore(store_root(home)), PackStore(store_root(home))
    manifest = import_path(blobs, path)
    if manifest.total_bytes == 0:
        raise ParisError(f"{path} is empty")
    blobs.pin(manifest.cid)
    if not packs.complete(manifest.cid):  # as a fetch would leave it: usable here with no network, by CID
        writer = PackWriter(packs, manifest.cid, manifest)
        for cid in manifest.unique_chunks():
            if not writer.has(cid):
                writer.write(cid, blobs.read(cid))
        writer.finish()
    asset = Asset(cid=manifest.cid, bytes=manifest.total_bytes, name=path.name)
    register_asset(asset, packs.path(asset.cid) / asset.name)
    return asset


def locate_assets(home: Path, assets: dict[str, Asset]) -> list[str]:
    """Register the assets that `home`'s store already holds complete (verified when they were written);
    returns what is missing (building a model that needs one of those says so, naming it)."""
    packs = PackStore(store_root(home))
    missing = []
    for what, asset in assets.items():
        where = packs.path(asset.cid) / asset.name
        if packs.complete(asset.cid) and where.exists():
            register_asset(asset, where)
        else:
            missing.append(what)
    return missing


def preset_assets(preset: ExpertPreset, *, sampling: bool = True, training: bool = True) -> dict[str, Asset]:
    """The assets a model preset names, by what they are: its text weights, (for `sampling`) its VAE and (for
    `training`) the weights its experts start from. A stored text encoder is for sampling only too: trainers
    and verifiers read its states from the data."""
    out: dict[str, Asset] = {}
    if preset.text.weights is not None and (sampling or not preset.text.stored):
        out["text-encoder weights"] = preset.text.weights
    if sampling and preset.backbone.vae is not None:
        out["video VAE"] = preset.backbone.vae
    if training and preset.backbone.init_from is not None:
        out["initial weights"] = preset.backbone.init_from
    return out


def spec_assets(spec: RunSpec, *, sampling: bool = True, training: bool = True) -> dict[str, Asset]:
    """The assets a run names, by what they are. Without `sampling`, only what training and verifying need:
    the text weights (a latent run's trainers read latents, so they never need its VAE)."""
    out = preset_assets(spec.preset, sampling=sampling, training=training)
    if sampling and spec.embedding.weights is not None:
        out["clip-embedding weights"] = spec.embedding.weights
    return out


def provide_assets(preset: ExpertPreset, home: Path, given: dict[str, Path | None]) -> None:
    """Make a preset's assets buildable here: each one `given` as a local path (by what it is: "video VAE",
    "text-encoder weights"), checked against the CID the preset names; the rest from `home`'s content store.
    One found nowhere is a one-line error naming it and how to give it."""
    wanted = preset_assets(preset, training=False)  # a checkpoint holds its weights: sampling needs no init
    for what, path in given.items():
        if path is None:
            continue
        if what not in wanted:
            raise ParisError(f"this model has no {what}: it was trained without one")
        found = asset_of(path)
        if found.cid != wanted[what].cid:
            raise ParisError(f"{path} is not this model's {what}: its CID is {found.cid}, the run names "
                             f"{wanted[what].name} ({wanted[what].cid})")
    rest = {w: a for w, a in wanted.items() if given.get(w) is None}
    home = Path(home).expanduser()
    if rest and store_root(home).is_dir():  # a home with no store holds nothing (and is not created here)
        rest = {w: rest[w] for w in locate_assets(home, rest)}
    for what, asset in rest.items():
        try:
            asset_path(asset, what)  # registered earlier in this process
        except ParisError:
            flag = "--vae DIR" if what == "video VAE" else "--text-encoder FILE"
            raise ParisError(f"the {what} {asset.name} ({asset.cid}) is not in {home}'s content store: give "
                             f"--home (the home that ran `run init` or `fetch`) or {flag}") from None


async def fetch_assets(store: ContentStore, assets: dict[str, Asset]) -> dict[str, Path]:
    """Fetch (or find in our store) and verify each asset, bounded by the size the run commits to; register
    where it lies. A missing or wrong asset is a one-line error naming it."""
    paths = {}
    for what, asset in assets.items():
        try:
            path = await store.get(asset.cid, expected_bytes=asset.bytes)
        except (ParisError, OSError) as e:
            raise ParisError(f"cannot get the run's {what} {asset.name} ({asset.cid}): {e}") from None
        register_asset(asset, path)
        paths[what] = path
    return paths
