"""FW-Merging (hard and soft) as mergekit methods ``fw_hard`` and ``fw_soft``.

The Frank-Wolfe optimisation needs the whole model, so it runs as a pre-pass
(:class:`mergekit_from.frank_wolfe.FWPrePass`, started by ``mergekit-from yaml``) and writes a
plan: where θ₀ lives and, per iteration, the picked vertex and coefficient (per tensor where the
LMO or AdaMerging works per tensor). This per-tensor kernel replays that plan inside mergekit's
executor with the same update function, so the output's layout, sharding, dtype and card are
mergekit's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    TensorGroup,
)
from pydantic import BaseModel

from mergekit_from.methods.side_file import side_file, side_file_spec


@lru_cache(maxsize=4)
def _load_plan(path: str) -> dict[str, Any]:
    plan = json.loads(Path(path).read_text())
    plan["tensor_set"] = frozenset(plan["tensors"])
    return plan


def per_tensor(value: Any, name: str) -> Any:
    """A plan entry's value for tensor ``name`` (plain values hold for every tensor)."""
    return value[name] if isinstance(value, dict) else value


def replay_plan(plan: dict[str, Any], name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tensor ``name`` of the FW result, from the inputs' tensors keyed by model reference."""
    from mergekit_from.frank_wolfe import fw_step

    theta = tensors[plan["initial"]].float()
    if name not in plan["tensor_set"]:
        return theta
    for moves in plan["steps"]:
        theta = fw_step(
            theta,
            [(per_tensor(m["coef"], name), tensors[per_tensor(m["vertex"], name)]) for m in moves],
            plan["density"],
        )
    return theta


@dataclass(frozen=True)
class FWMerge(GroupMergeMethod):
    variant: Literal["hard", "soft"]

    @property
    def method_name(self) -> str:
        return f"fw_{self.variant}"

    @cached_property
    def spec(self) -> MergeMethodSpec:
        return MergeMethodSpec(
            name=self.method_name,
            pretty_name=f"FW-Merging ({self.variant} Frank-Wolfe)",
            reference_url="https://arxiv.org/abs/2503.12649",
            parameters=(side_file_spec("plan", "the Frank-Wolfe plan file"),),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
        )

    @property
    def settings_model(self) -> type[BaseModel]:
        """What a recipe sets for the pre-pass (section ``fw_hard:``/``fw_soft:`` or ``parameters:``)."""
        from mergekit_from.frank_wolfe import HardSettings, SoftSettings

        return SoftSettings if self.variant == "soft" else HardSettings

    def prepass(self, config, raw: dict[str, Any], recipe_dir: Path):
        from mergekit_from.frank_wolfe import FWPrePass

        return FWPrePass(self.method_name, config, raw, recipe_dir)

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        plan = _load_plan(side_file(self.method_name, parameters, "plan"))
        tensors = {str(e.id): e.tensor for e in group.entries}
        return replay_plan(plan, group.metadata.name, tensors).to(group.base.tensor.dtype)


fw_hard = FWMerge("hard")
fw_soft = FWMerge("soft")
