"""Reading a pydantic record from a JSON file, with a one-line error that names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from protocol.errors import IntegrityError

M = TypeVar("M", bound=BaseModel)


def read_model(cls: type[M], path: Path, *, what: str) -> M:
    """`cls` parsed from `path`; missing or malformed files raise IntegrityError("<what> <path> …")."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{what} {path} does not exist")
    try:
        return cls.model_validate_json(path.read_bytes())
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise IntegrityError(f"{what} {path} is malformed: {err['msg']} (at {where})") from None
