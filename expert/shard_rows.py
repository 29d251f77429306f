"""Rows of a tensor kept in safetensors shards on disk, read when a batch asks for them.

A cluster larger than RAM must still train: a trainer holds `LazyRows` for its frames (or latents) and
reads only the rows of each batch. Rows are read with `pread` at offsets taken from each shard's header,
not through a memory map: mapped pages count toward the process's resident set as they are touched, so an
epoch over a mapped file would grow it to the whole file; a read copies the batch and keeps nothing else.
The shards are verified (SHA-256 against the data set's manifest) before a `LazyRows` is built on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from protocol.errors import IntegrityError

_DTYPES = {"U8": np.uint8, "F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64}
MAX_HEADER = 100 << 20


def tensor_location(path: Path, key: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(byte offset of the data, shape, dtype) of tensor `key` in a safetensors file, from its header;
    checked against the file's size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise IntegrityError(f"{path.name}: malformed safetensors header")
        try:
            info = json.loads(f.read(n))[key]
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(v) for v in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{path.name}: no readable tensor {key!r} ({e})") from None
    if end - start != int(np.prod(shape)) * dtype.itemsize or 8 + n + end > size or start < 0:
        raise IntegrityError(f"{path.name}: tensor {key!r} does not fit the file")
    return 8 + n + start, shape, dtype


class LazyRows:
    """A read-only N×… array whose rows live in shard files: `rows[idx]` reads them (an int, a slice or an
    index array; rows come back in the order asked). `select` and `concat` make new views without reading."""

    def __init__(self, files: list[Path], offsets: list[int], row_shape: tuple[int, ...], dtype: np.dtype,
                 shard: np.ndarray, row: np.ndarray) -> None:
        self.files, self.offsets = files, offsets
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.shard, self.row = shard.astype(np.int32), row.astype(np.int64)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    @classmethod
    def open(cls, files: list[Path], key: str) -> LazyRows:
        """Every row of tensor `key` across `files`, in order (all shards must agree on the row shape)."""
        offsets, shards, rows, row_shape, dtype = [], [], [], None, None
        for i, path in enumerate(files):
            offset, shape, dt = tensor_location(path, key)
            if row_shape is None:
                row_shape, dtype = shape[1:], dt
            elif shape[1:] != row_shape or dt != dtype:
                raise IntegrityError(f"{path.name}: {key} rows of {shape[1:]} {dt}, other shards hold {row_shape}")
            offsets.append(offset)
            shards.append(np.full(shape[0], i))
            rows.append(np.arange(shape[0]))
        if row_shape is None or dtype is None:
            raise IntegrityError(f"no shards to read {key} from")
        return cls(list(files), offsets, row_shape, dtype, np.concatenate(shards), np.concatenate(rows))

    def __len__(self) -> int:
        return len(self.row)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def __getitem__(self, idx) -> np.ndarray:
        pick = np.arange(len(self))[idx]
        single = np.ndim(pick) == 0
        pick = np.atleast_1d(pick)
        out = np.empty((len(pick), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(pick), -1).view(np.uint8)
        for s in np.unique(self.shard[pick]):
            where = np.flatnonzero(self.shard[pick] == s)
            fd = os.open(self.files[s], os.O_RDONLY)
            try:
                for j in where:
                    pos = self.offsets[s] + int(self.row[pick[j]]) * self.row_bytes
                    data = os.pread(fd, self.row_bytes, pos)
                    if len(data) != self.row_bytes:
                        raise IntegrityError(f"{self.files[s].name} is truncated")
                    flat[j] = np.frombuffer(data, dtype=np.uint8)
            finally:
                os.close(fd)
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def select(self, indices) -> LazyRows:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        return LazyRows(self.files, self.offsets, self.row_shape, self.dtype, self.shard[idx], self.row[idx])

    @classmethod
    def concat(cls, parts: list[LazyRows]) -> LazyRows:
        first = parts[0]
        if any(p.row_shape != first.row_shape or p.dtype != first.dtype for p in parts):
            raise ValueError("cannot concatenate rows of different shapes")
        files, offsets, shards = [], [], []
        for p in parts:
            shards.append(p.shard + len(files))
            files += p.files
            offsets += p.offsets
        return cls(files, offsets, first.row_shape, first.dtype, np.concatenate(shards),
                   np.concatenate([p.row for p in parts]))
