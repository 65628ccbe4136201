"""Safetensors tensors as float32 numpy arrays, memory-mapped, without torch.

safetensors' own numpy API has no bfloat16 (numpy lacks the type), so tensors are mapped from
the header's offsets directly; a bfloat16 is the upper half of a float32, widened exactly.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}


def _read_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """A safetensors file's header length and JSON header (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def read_header(path: str | Path) -> dict[str, Any]:
    return _read_header(path)[1]


def is_model_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p / SINGLE).is_file() or (p / INDEX).is_file()


@dataclass(frozen=True)
class _Entry:
    file: Path
    data_start: int  # where the file's tensor data begins (after the header)
    info: dict[str, Any]

    def array(self) -> np.ndarray:
        shape, (start, end) = tuple(self.info["shape"]), self.info["data_offsets"]
        dtype = _NUMPY[self.info["dtype"]]
        raw = np.memmap(self.file, dtype=dtype, mode="r", offset=self.data_start + start, shape=shape) \
            if end > start else np.zeros(shape, dtype)
        return _widen(raw, self.info["dtype"])


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def decode(info: dict[str, Any], data: bytes | memoryview) -> np.ndarray:
    """One tensor as float32 from its bytes (``info``: its header entry: dtype and shape)."""
    raw = np.frombuffer(data, dtype=_NUMPY[info["dtype"]]).reshape(tuple(info["shape"]))
    return _widen(raw, info["dtype"])


def parse(blob: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a whole safetensors file held in memory, as float32."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = memoryview(blob)[8 + n :]
    return {name: decode(info, data[info["data_offsets"][0] : info["data_offsets"][1]])
            for name, info in header.items() if name != "__metadata__"}


def nbytes(info: dict[str, Any]) -> int:
    start, end = info["data_offsets"]
    return end - start


def _entries(path: Path) -> dict[str, _Entry]:
    n, header = _read_header(path)
    return {name: _Entry(path, 8 + n, info) for name, info in header.items() if name != "__metadata__"}


def read_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, as float32."""
    return {name: entry.array() for name, entry in _entries(Path(path)).items()}


@dataclass
class ArrayFolder:
    """A model folder's tensors (one file or an index of shards): names, shapes, float32 arrays."""

    root: Path
    entries: dict[str, _Entry] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> "ArrayFolder":
        root = Path(path).expanduser()
        if (root / INDEX).is_file():
            shards = sorted(set(json.loads((root / INDEX).read_text())["weight_map"].values()))
        else:
            shards = [SINGLE]
        folder = cls(root)
        for shard in shards:
            folder.entries.update(_entries(root / shard))
        folder.shapes = {name: tuple(e.info["shape"]) for name, e in folder.entries.items()}
        return folder

    def array(self, name: str) -> np.ndarray:
        return self.entries[name].array()
