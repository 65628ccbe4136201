"""FW-Merging (hard and soft) as mergekit methods ``fw_hard`` and ``fw_soft``.

The Frank-Wolfe optimisation needs the whole model, so it runs as a pre-pass
(:class:`mergekit_from.prepass.fw.FWPrePass`, started by ``mergekit-from yaml``) and writes a
plan (:class:`~mergekit_from.methods.fw_plan.FWPlan`): where θ₀ lives and, per iteration, the
picked vertex and coefficient (per tensor where the LMO or AdaMerging works per tensor). This
per-tensor kernel replays that plan inside mergekit's executor with the same update function, so
the output's layout, sharding, dtype and card are mergekit's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal

import torch
from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    TensorGroup,
)

from mergekit_from.methods.fw_plan import FWPlan
from mergekit_from.methods.side_file import side_file, side_file_spec


@lru_cache(maxsize=4)
def _load_plan(path: str) -> FWPlan:
    return FWPlan.read(path)


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

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        plan = _load_plan(side_file(self.method_name, parameters, "plan"))
        tensors = {str(e.id): e.tensor for e in group.entries}
        return plan.replay(group.metadata.name, tensors).to(group.base.tensor.dtype)


fw_hard = FWMerge("hard")
fw_soft = FWMerge("soft")
