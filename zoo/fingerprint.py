"""Tensor fingerprints and the compatibility of a candidate with a base.

A fingerprint is the sorted list of (name, dtype, shape) of a repo's tensors plus two hashes:
``shape_hash`` (names + shapes) for fast equality with the base, and ``body_hash`` (the same
without the vocabulary tensors), an indexed column that finds a base's family across vocabularies.
Anything short of equal shapes is explained by :func:`zoo.layout.first_mismatch`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.adapter import base_weight_name, split_key
from zoo.arrays import read_header
from zoo.layout import first_mismatch, is_vocab_tensor


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
        return _hash(f"{n}:{list(s)}" for n, _, s in self.tensors if not is_vocab_tensor(n))

    @property
    def vocab_size(self) -> int | None:
        rows = [s[0] for n, _, s in self.tensors if is_vocab_tensor(n) and s]
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
    same = cand.shape_hash == base.shape_hash  # the stored hashes: no walk over the tensors
    mismatch = None if same else first_mismatch(base.shapes, cand.shapes, vocab="exact")
    if mismatch is None:
        return Compatibility(True, "same tensor names and shapes as the base")
    return Compatibility(False, str(mismatch), vocab_mismatch=mismatch.kind == "vocab")


def _compare_adapter(base: Fingerprint, adapter: Fingerprint) -> Compatibility:
    """LoRA A is (r, in) and B is (out, r) against the base's (out, in) weight of the same module."""
    shapes = base.shapes
    n = 0
    for name, _, shape in adapter.tensors:
        factor = split_key(name)
        if factor is None:
            continue
        module, part = factor
        target = base_weight_name(module, shapes)
        if target is None:
            return Compatibility(False, f"adapter tensor {name!r} adapts {module!r}, which the base lacks")
        axis = 1 if part == "A" else 0
        if len(shapes[target]) != 2 or len(shape) != 2 or shapes[target][axis] != shape[axis]:
            return Compatibility(False, f"adapter tensor {name!r} {list(shape)} does not fit the base's "
                                        f"{target!r} {list(shapes[target])}")
        n += 1
    if n == 0:
        return Compatibility(False, "adapter has no LoRA tensors")
    return Compatibility(True, f"{n} LoRA tensors fit the base's modules")
