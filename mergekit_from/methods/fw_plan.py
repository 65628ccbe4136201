"""The FW-Merging plan and its update rule: what the pre-pass writes and the kernel replays.

The optimiser (:mod:`mergekit_from.prepass.fw`) and the per-tensor kernel
(:mod:`mergekit_from.methods.fw_merge`) both apply :func:`fw_step` from here, so the replay
inside mergekit is the optimisation, tensor for tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence, TypeVar, Union

import torch

PLAN_FORMAT = 1

T = TypeVar("T")
PerTensor = Union[T, dict[str, T]]  # one value for every tensor, or one per tensor name


def per_tensor(value: PerTensor[T], name: str) -> T:
    """A plan entry's value for tensor ``name`` (plain values hold for every tensor)."""
    return value[name] if isinstance(value, dict) else value


def ties_trim(direction: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (TIES on one vector)."""
    k = max(1, int(round(density * direction.numel())))
    if k >= direction.numel():
        return direction
    flat = direction.abs().flatten()
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return torch.where(direction.abs() >= threshold, direction, torch.zeros_like(direction))


def fw_step(theta: torch.Tensor, moves: Sequence[tuple[float, torch.Tensor]], density: float | None) -> torch.Tensor:
    """θ + Σ c·D(s − θ) in fp32, every direction taken from the same θ."""
    theta = theta.float()
    out = theta.clone()
    for coef, vertex in moves:
        direction = vertex.float() - theta
        if density is not None:
            direction = ties_trim(direction, density)
        out.add_(direction, alpha=coef)
    return out


@dataclass(frozen=True)
class Move:
    """One step's term c·D(s − θ): its coefficient and the vertex s (a model reference)."""

    coef: PerTensor[float]
    vertex: PerTensor[str]


@dataclass
class FWPlan:
    """Where θ₀ lives and, per iteration, the moves from it (``fw_plan.json``)."""

    method: str
    initial: str  # reference of the model holding θ₀
    tensors: list[str]  # the optimised tensors; every other tensor is θ₀'s
    density: float | None  # TIES density of the updates (None: plain task-arithmetic steps)
    steps: list[list[Move]] = field(default_factory=list)

    @cached_property
    def tensor_set(self) -> frozenset[str]:
        return frozenset(self.tensors)

    def references(self) -> set[str]:
        """Every model the replay reads: θ₀'s holder and each picked vertex."""
        refs = {self.initial}
        for moves in self.steps:
            for move in moves:
                v = move.vertex
                refs.update(v.values() if isinstance(v, dict) else [v])
        return refs

    def replay(self, name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tensor ``name`` of the FW result, from the inputs' tensors keyed by model reference."""
        theta = tensors[self.initial].float()
        if name not in self.tensor_set:
            return theta
        for moves in self.steps:
            theta = fw_step(
                theta,
                [(per_tensor(m.coef, name), tensors[per_tensor(m.vertex, name)]) for m in moves],
                self.density,
            )
        return theta

    def to_json(self) -> str:
        steps = [[{"coef": m.coef, "vertex": m.vertex} for m in moves] for moves in self.steps]
        return json.dumps({"format": PLAN_FORMAT, "method": self.method, "initial": self.initial,
                           "tensors": self.tensors, "density": self.density, "steps": steps})

    def write(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FWPlan":
        steps = [[Move(m["coef"], m["vertex"]) for m in moves] for moves in data["steps"]]
        return cls(data["method"], data["initial"], list(data["tensors"]), data["density"], steps)

    @classmethod
    def read(cls, path: str | Path) -> "FWPlan":
        return cls.from_dict(json.loads(Path(path).read_text()))
