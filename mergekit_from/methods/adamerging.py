"""AdaMerging as the mergekit method ``adamerging``.

Its coefficients are learned in a pre-pass (:class:`mergekit_from.prepass.adamerging.AdaMergingPrePass`)
that writes them as a one-step FW plan from the base, θ = base + Σ_k c_k (θ_k − base); this kernel
replays it like fw_hard / fw_soft do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mergekit.merge_methods.base import BasePolicy, InputContract, MergeMethodSpec

from mergekit_from.methods.fw_merge import FWMerge
from mergekit_from.methods.side_file import side_file_spec


@dataclass(frozen=True)
class AdaMergingMerge(FWMerge):
    @property
    def method_name(self) -> str:
        return "adamerging"

    @cached_property
    def spec(self) -> MergeMethodSpec:
        return MergeMethodSpec(
            name=self.method_name,
            pretty_name="AdaMerging (entropy-fitted task arithmetic)",
            reference_url="https://arxiv.org/abs/2310.02575",
            parameters=(side_file_spec("plan", "the coefficients as a plan file"),),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
        )


adamerging = AdaMergingMerge("soft")  # the variant is unused: the name and spec are its own
