"""The dataset manifest: which shards make up a data set, their hashes, and what each clip carries."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.canonical import canonical_json, content_id
from protocol.errors import IntegrityError
from protocol.records_io import read_model

DATA_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class Frozen(BaseModel):
    """Base for every record: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardInfo(Frozen):
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.safetensors$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    clips: int = Field(ge=1)
    bytes: int = Field(ge=1)


class AttributeSpec(Frozen):
    """A categorical attribute the generator knows for each clip (shape, colour, ...), with its value names."""

    name: str
    values: tuple[str, ...]


class LatentInfo(Frozen):
    """What a latent data set's shards hold instead of frames: each clip's VAE latents (normalised with the
    VAE's latents_mean/std), C×T×H×W float16, encoded once by the VAE whose asset CID is `vae`."""

    vae: str = Field(pattern=r"^b[a-z2-7]{20,120}$")
    source: str = Field(pattern=r"^data-[0-9a-f]{16}$")  # the data id of the pixel data set encoded
    shape: tuple[int, int, int, int]
    dtype: Literal["float16"] = "float16"


class TextStatesInfo(Frozen):
    """What a data set's shards hold beside the clips when its run's text encoder is stored
    (`TextEncoderConfig.stored`): each caption's per-token states (`text_states`, N×L×D float16, zero at
    padding) and the empty caption's (`text_null`, L×D, for condition dropout), computed once by the encoder
    whose asset CID is `encoder`."""

    encoder: str = Field(pattern=r"^b[a-z2-7]{20,120}$")
    source: str = Field(pattern=r"^data-[0-9a-f]{16}$")  # the data id of the pixel data set encoded
    shape: tuple[int, int]
    dtype: Literal["float16"] = "float16"


class DataManifest(Frozen):
    """Describes a data set on disk. Shards hold `frames` (uint8 N×T×H×W×3) — or, in a latent data set
    (`latents` set), `latents` (float16 N×C×T×H×W) — `tokens` (int32 N×L), optionally `attributes`
    (int64 N×A), and the captions as JSON in the safetensors metadata. `frames/height/width` stay the
    source clips' size either way."""

    format_version: Literal[1] = DATA_FORMAT_VERSION
    source: Literal["synthetic", "real"]
    frames: int = Field(ge=1)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    fps: float = Field(gt=0)
    tokenizer: str
    context_length: int = Field(ge=4)
    attributes: tuple[AttributeSpec, ...] = ()
    generator: dict[str, str | int | float] = Field(default_factory=dict)
    shards: tuple[ShardInfo, ...]
    total_clips: int = Field(ge=1)
    latents: LatentInfo | None = None
    text: TextStatesInfo | None = None

    @property
    def data_id(self) -> str:
        return content_id(self, prefix="data")

    def to_bytes(self) -> bytes:
        return canonical_json(self)

    @classmethod
    def load(cls, directory: Path) -> DataManifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise IntegrityError(f"{directory} is not a paris-node data set (no {MANIFEST_NAME})")
        manifest = read_model(cls, path, what="data manifest")
        if sum(s.clips for s in manifest.shards) != manifest.total_clips:
            raise IntegrityError(f"{path} is inconsistent: shard clip counts do not add up to total_clips")
        return manifest
