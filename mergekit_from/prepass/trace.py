"""The FW-Merging trace (``fw_trace.json``): settings, pool, per-iteration objective and picks,
and each source's effective coefficient in the result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from mergekit_from.methods.fw_plan import FWPlan, per_tensor

TRACE_FILE = "fw_trace.json"


def _without_none(obj: Any) -> dict[str, Any]:
    """A record's fields in declaration order, leaving out those that do not apply (None)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass
class PickRecord:
    """One LMO pick: each model's share of the tensors, and the model (``lmo: model``) or the
    model per tensor (``lmo: tensor``)."""

    pick_share: dict[str, float]
    picked: Optional[str] = None
    picked_by_tensor: Optional[dict[str, str]] = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self)


@dataclass
class Iteration:
    """One Frank-Wolfe iteration; hard iterations have a ``step`` and one pick, soft ones a pick
    per target and AdaMerging's inner loss and mean coefficients."""

    iter: int
    objective: float
    step: Optional[float] = None
    picks_per_target: Optional[dict[str, PickRecord]] = None
    pick_share: dict[str, float] = field(default_factory=dict)
    picked: Optional[str] = None
    picked_by_tensor: Optional[dict[str, str]] = None
    inner_loss: Optional[dict[str, Any]] = None
    mean_coefficient: Optional[list[float]] = None
    seconds: Optional[float] = None
    cpu_seconds: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        out = _without_none(self)
        if self.picks_per_target is not None:
            out["picks_per_target"] = {t: r.to_dict() for t, r in self.picks_per_target.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Iteration":
        data = dict(data)
        if data.get("picks_per_target") is not None:
            data["picks_per_target"] = {t: PickRecord(**r) for t, r in data["picks_per_target"].items()}
        return cls(**data)


@dataclass
class FWTrace:
    method: str
    settings: dict[str, Any]
    pool: list[str]
    targets: list[str]
    iterations: list[Iteration] = field(default_factory=list)
    final_objective: float | None = None
    coefficients: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self) | {"iterations": [it.to_dict() for it in self.iterations]}
        return json.dumps(data, indent=1)

    def write(self, out_dir: Path) -> None:
        (out_dir / TRACE_FILE).write_text(self.to_json())

    @classmethod
    def read(cls, path: Path) -> "FWTrace":
        data = json.loads(Path(path).read_text())
        return cls(**data | {"iterations": [Iteration.from_dict(it) for it in data["iterations"]]})


def effective_coefficients(
    plan: FWPlan, base_ref: str, initial: Callable[[str], dict[str, float]], numels: dict[str, int]
) -> dict[str, float]:
    """Each source's coefficient on its task vector in the result, θ = base + Σ_i a_i τ_i.

    Per tensor, a starts at θ₀'s coefficients (``initial(name)``) and every step
    θ ← θ + Σ c (s − θ) makes a ← (1 − Σ c)·a + Σ c·e_s; the per-tensor values are averaged
    weighted by tensor size. Under TIES updates the trimmed directions make these nominal.
    """
    totals: dict[str, float] = {}
    size = sum(numels[n] for n in plan.tensors)
    for name in plan.tensors:
        theta0 = initial(name)
        a = dict(theta0)
        for moves in plan.steps:
            cs = [(per_tensor(m.coef, name), per_tensor(m.vertex, name)) for m in moves]
            keep = 1.0 - sum(c for c, _ in cs)
            a = {r: keep * v for r, v in a.items()}
            for c, vertex in cs:
                vec = theta0 if vertex == plan.initial else {} if vertex == base_ref else {vertex: 1.0}
                for r, x in vec.items():
                    a[r] = a.get(r, 0.0) + c * x
        for r, v in a.items():
            totals[r] = totals.get(r, 0.0) + v * numels[name] / size
    return {r: round(v, 6) for r, v in sorted(totals.items())}
