"""Canonical encoding and content hashes, so that every peer derives the same id from the same record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_CHUNK = 1 << 20


def canonical_json(value: BaseModel | dict[str, Any] | list[Any], *, exclude: set[str] | None = None) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8, NaN refused."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude=exclude)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_id(value: BaseModel | dict[str, Any], *, prefix: str, exclude: set[str] | None = None,
               digits: int = 16) -> str:
    """A human-quotable id: `prefix` + the first `digits` hex digits of the canonical encoding's SHA-256.
    Fields that are None are left out, so that adding an optional field to a schema keeps old ids."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude=exclude, exclude_none=True)
    return f"{prefix}-{sha256_hex(canonical_json(value))[:digits]}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed so that large shards do not need to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()
