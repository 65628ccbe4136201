"""FroM: Frobenius-norm data-free adaptive merging (Li et al., 2025, arXiv:2506.02478).

Per tensor, with task vectors tau_i = W_i - W_base and prior weights p_i:

    w_i    = p_i * ||tau_i||_F ** k
    merged = W_base + lambda * sum_i w_i tau_i / sum_i w_i

k = 0 is the plain mean of the task vectors; k -> inf selects the largest-norm one.
Decisions where the paper is silent (documented in the README):
- the default k is 2.0, read off the reviews' "squared Frobenius norm measures importance";
  ``benchmarks/quality.py`` sweeps k in {0, 0.5, 1, 2, 4, 8};
- a zero task vector carries no information and gets weight 0 for every k, so a frozen
  tensor in one fine-tune does not dilute the others; all-zero task vectors return the base;
- ``scope: linear`` applies FroM to 2-D non-vocabulary weights only and averages every other
  tensor with the priors, as RegMean does for the tensors it has no Gram for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Sequence

import torch
from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
    TensorGroup,
    TensorMetadata,
)
from pydantic import Field

from mergekit_from.finite import name_non_finite_input

DEFAULT_K = 2.0

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Scope = Literal["all", "linear"]


def from_coefficients(norms: torch.Tensor, priors: torch.Tensor, k: float) -> torch.Tensor:
    """Normalised FroM weights p_i ||tau_i||^k / sum_j p_j ||tau_j||^k, in log space.

    Inputs with a zero norm or a zero prior get weight 0; if every input does, all weights
    are 0 (the merge then returns the base).
    """
    norms = norms.double()
    priors = priors.double()
    active = (norms > 0) & (priors > 0)
    if not bool(active.any()):
        return torch.zeros_like(norms)
    logits = k * torch.log(norms.clamp_min(torch.finfo(torch.float64).tiny)) + torch.log(
        priors.clamp_min(torch.finfo(torch.float64).tiny)
    )
    logits = logits.masked_fill(~active, float("-inf"))
    return torch.softmax(logits, dim=0)


def tensor_weights(norms: torch.Tensor, priors: torch.Tensor, k: float, use_norms: bool) -> torch.Tensor:
    """One tensor's weight per input, as the merge applies them (before ``lambda``): FroM's, or
    the prior-weighted mean where ``use_norms`` is off. `auto`'s card reports these too."""
    return from_coefficients(norms, priors, k if use_norms else 0.0)


def uses_norms(scope: str, ndim: int, metadata: TensorMetadata) -> bool:
    """Whether ``scope`` applies FroM's norm weighting to a tensor (else the plain prior mean)."""
    return scope == "all" or is_linear_weight(ndim, metadata)


def from_merge_tensors(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    k: float = DEFAULT_K,
    scale: float = 1.0,
    priors: Sequence[float] | None = None,
    use_norms: bool = True,
    names: Sequence[str] | None = None,
    tensor_name: str | None = None,
) -> torch.Tensor:
    """The FroM kernel on plain tensors: no I/O, fp32 accumulation, result in base's dtype.

    ``use_norms=False`` gives the prior-weighted mean of the task vectors (the fallback for
    tensors outside ``scope: linear``). ``names``/``tensor_name`` only label errors.
    The task vectors are stacked once in fp32 (as mergekit's task_arithmetic stacks its
    deltas), so norms and the weighted sum are each one vectorised pass.
    """
    if not tensors:
        return base
    base32 = base.float()
    n = len(tensors)
    prior_t = torch.ones(n, dtype=torch.float64) if priors is None else torch.tensor(priors, dtype=torch.float64)

    taus = torch.empty((n, *base.shape), dtype=torch.float32, device=base.device)
    for i, t in enumerate(tensors):
        torch.sub(t, base32, out=taus[i])
    norms = torch.linalg.vector_norm(taus.view(n, -1), dim=1).double()
    for i in torch.nonzero(~torch.isfinite(norms)).flatten().tolist():
        name_non_finite_input(base, [tensors[i]], [names[i] if names else f"input #{i}"], tensor_name)
        norms[i] = torch.linalg.vector_norm(tensors[i].double() - base.double())  # finite inputs, fp32 overflow

    weights = tensor_weights(norms, prior_t, k, use_norms)
    if not bool((weights > 0).any()):
        return base
    merged = torch.tensordot(weights.to(torch.float32) * scale, taus, dims=1)
    return merged.add_(base32).to(base.dtype)


def is_linear_weight(ndim: int, metadata: TensorMetadata) -> bool:
    """A 2-D weight that is not an embedding / LM head (no vocabulary axis)."""
    return ndim == 2 and metadata.vocabulary_axis is None and (
        metadata.name is None or metadata.name.endswith("weight")
    )


@dataclass(frozen=True)
class FroMMerge(GroupMergeMethod):
    """mergekit method ``from``; see the module docstring for the maths and decisions."""

    @cached_property
    def spec(self) -> MergeMethodSpec:
        return MergeMethodSpec(
            name="from",
            pretty_name="FroM (Frobenius-norm adaptive merging)",
            reference_url="https://arxiv.org/abs/2506.02478",
            parameters=(
                ParameterSpec(
                    "k", NonNegative, ParameterScope.SHARED, default=DEFAULT_K,
                    description="exponent of the task vector's Frobenius norm (0 = plain mean)",
                ),
                ParameterSpec(
                    "lambda", Positive, ParameterScope.SHARED, default=1.0,
                    description="scale applied to the merged task vector",
                ),
                ParameterSpec(
                    "weight", NonNegative, ParameterScope.NON_BASE, default=1.0,
                    description="per-model prior multiplied into the norm weight (0 drops a model)",
                ),
                ParameterSpec(
                    "scope", Scope, ParameterScope.SHARED, default="all",
                    description="'all' floating tensors, or 'linear' 2-D weights only (the rest averaged)",
                ),
            ),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
        )

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        entries = group.non_base
        return from_merge_tensors(
            group.base.tensor,
            [e.tensor for e in entries],
            k=parameters["k"],
            scale=parameters["lambda"],
            priors=[parameters["weight"][e.id] for e in entries],
            use_norms=uses_norms(parameters["scope"], group.entries[0].tensor.ndim, group.metadata),
            names=[str(e.id) for e in entries],
            tensor_name=group.metadata.name,
        )


from_merge = FroMMerge()
