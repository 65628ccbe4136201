"""Tensor fingerprints and the compatibility of a candidate with a base.

A fingerprint is the sorted list of (name, dtype, shape) of a repo's tensors plus two hashes:
``shape_hash`` (names + shapes) for fast equality with the base, and ``body_hash`` (the same
without the vocabulary tensors), whose equality under a different ``shape_hash`` pins a
mismatch on the vocabulary rather than on the architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_from.weights import VOCAB_TENSORS

ADAPTER_PREFIX = "base_model.model."


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def header_params(path: str | Path) -> dict[str, int]:
    params: dict[str, int] = {}
    for name, info in read_header(path).items():
        if name != "__metadata__":
            params[info["dtype"]] = params.get(info["dtype"], 0) + math.prod(info["shape"])
    return params


def _hash(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    kind: str  # "model" or "adapter"
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, tensors: Iterable[tuple[str, str, Iterable[int]]], kind: str = "model") -> "Fingerprint":
        return cls(kind, tuple(sorted((n, d, tuple(int(x) for x in s)) for n, d, s in tensors)))

    @classmethod
    def from_row(cls, kind: str, tensors: list[Any]) -> "Fingerprint":
        return cls.of(((n, d, s) for n, d, s in tensors), kind)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: s for n, _, s in self.tensors}

    @property
    def shape_hash(self) -> str:
        return _hash(f"{n}:{list(s)}" for n, _, s in self.tensors)

    @property
    def body_hash(self) -> str:
        return _hash(f"{n}:{list(s)}" for n, _, s in self.tensors if not n.endswith(VOCAB_TENSORS))

    @property
    def vocab_size(self) -> int | None:
        rows = [s[0] for n, _, s in self.tensors if n.endswith(VOCAB_TENSORS) and s]
        return rows[0] if rows else None

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for _, _, s in self.tensors)

    def row(self) -> dict[str, Any]:
        """Columns of ``db.TensorFingerprint`` (without repo_id / sha)."""
        return {
            "kind": self.kind,
            "n_tensors": len(self.tensors),
            "n_params": self.n_params,
            "tensors": [[n, d, list(s)] for n, d, s in self.tensors],
            "shape_hash": self.shape_hash,
            "body_hash": self.body_hash,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class Compatibility:
    compatible: bool | None  # None: not enough facts (no header read)
    reason: str
    vocab_mismatch: bool = False


def compare(base: Fingerprint | None, cand: Fingerprint | None, *, quantized: bool = False,
            allow_quantized: bool = False) -> Compatibility:
    """Can ``cand`` be merged into ``base`` tensor by tensor (a task vector exists)?"""
    if quantized and not allow_quantized:
        return Compatibility(False, "quantized (excluded by default)")
    if base is None or cand is None:
        return Compatibility(None, "no tensor fingerprint for " + ("the base" if base is None else "the candidate"))
    if cand.kind == "adapter":
        return _compare_adapter(base, cand)
    if cand.shape_hash == base.shape_hash:
        return Compatibility(True, "same tensor names and shapes as the base")
    if cand.body_hash == base.body_hash:
        return Compatibility(False, f"vocabulary mismatch: {cand.vocab_size} rows vs the base's {base.vocab_size}",
                             vocab_mismatch=True)
    mine, theirs = base.shapes, cand.shapes
    for name, shape in theirs.items():
        if name not in mine:
            return Compatibility(False, f"tensor {name!r} is not in the base")
        if mine[name] != shape:
            return Compatibility(False, f"tensor {name!r} has shape {list(shape)}, the base {list(mine[name])}")
    missing = sorted(set(mine) - set(theirs))
    return Compatibility(False, f"lacks the base's tensor {missing[0]!r}" if missing else "different tensors")


def _compare_adapter(base: Fingerprint, adapter: Fingerprint) -> Compatibility:
    """LoRA A is (r, in) and B is (out, r) against the base's (out, in) weight of the same module."""
    shapes = base.shapes
    n = 0
    for name, _, shape in adapter.tensors:
        for part, axis in ((".lora_A.", 1), (".lora_B.", 0)):
            if part not in name:
                continue
            target = name.removeprefix(ADAPTER_PREFIX).replace(part[:-1], "").replace("..", ".")
            target = target.replace(".weight", "") + ".weight"
            if target not in shapes:
                return Compatibility(False, f"adapter tensor {name!r} targets {target!r}, which the base lacks")
            if len(shapes[target]) != 2 or len(shape) != 2 or shapes[target][axis] != shape[axis]:
                return Compatibility(False, f"adapter tensor {name!r} {list(shape)} does not fit the base's "
                                            f"{target!r} {list(shapes[target])}")
            n += 1
    if n == 0:
        return Compatibility(False, "adapter has no LoRA tensors")
    return Compatibility(True, f"{n} LoRA tensors fit the base's modules")
