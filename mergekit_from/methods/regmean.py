"""RegMean as mergekit method ``regmean`` (Jin et al., ICLR 2023, arXiv:2212.09849).

For a linear weight W_i ([out, in]) with input Gram G_i of model i,

    G̃_i = α·G_i + (1 − α)·diag(G_i)                 (off-diagonal shrink)
    W*  = ( (Σ G̃_i + ρI)⁻¹ (Σ G̃_i W_iᵀ + ρ W̄ᵀ) )ᵀ      (solved in float64)

where W̄ is the plain mean of the W_i. Transformers' ``Conv1D`` (GPT-2) stores W_iᵀ ([in, out]);
the pre-pass marks those tensors and the kernel solves for their transpose, as the official code
does. Every tensor without Grams (embeddings, norms, biases) is the plain mean of the pool models.
The Grams come from the pre-pass in :mod:`mergekit_from.prepass.regmean`, started by
``mergekit-from yaml``; this kernel reads one model's Gram at a time.

Two safeguards that the official code (fp32 ``torch.inverse``, no ridge) lacks:

- **Scale-aware ridge** ρ = ridge · mean(diag Σ G̃_i), i.e. each model's Gram gets
  ``ridge · (mean input energy per channel)`` added to its diagonal, and the same pseudo-Gram
  times that model's W_i on the right. It is GPTQ's dampening of the same XᵀX matrices
  (GPTQ uses 1% of the mean diagonal), relative to the Grams so it means the same at any
  activation scale. The default ``ridge: 0.1`` is ten times GPTQ's: on SmolLM2-135M's experts
  (64 samples per task) 0.001 and 0.01 extrapolated down_proj past the reach check below, and 0.1
  gave the best merges measured there (README, "Which method"); on the 1.3M-parameter toy, where
  every merge of 4+ experts collapses, it scored 0.01-0.02 under 0.001. Added per model rather
  than to the sum, it pulls directions that the calibration data barely reached toward the plain
  average (RegMean's own fallback) instead of toward zero. With a few large-magnitude activation
  channels and few calibration tokens, as in real LLMs, the Grams are near-singular and the
  unregularised solution extrapolates in the directions the data did not reach: on a tiny Llama
  with channels scaled by 1e4, experts 0.1% apart and 4 samples, a tensor moved by 1.6x its own
  norm; with the default ridge it stays within 0.5% (tests/test_regmean.py). ``ridge: 0`` is the
  official RegMean (``regmean_solve``'s default).
- **Reach check.** A convex combination of the inputs lies within max_i ‖W_i − W̄‖_F (their
  spread) of their mean; RegMean's matrix weights may go beyond that, up to about 2.3x on our
  fine-tuned test experts. A merged tensor farther than ``REACH`` = 10 spreads from W̄ (plus
  float64 rounding) is the extrapolation above, 20-2000 spreads in our ill-conditioned tests,
  and is never written: the run stops with exit 2 naming the tensor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Iterable

import torch
from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    TensorGroup,
)

from mergekit_from.errors import TensorValueError
from mergekit_from.methods.side_file import side_file, side_file_spec
from mergekit_from.weights import TensorIndex

REACH = 10.0  # spreads; see the module docstring
ROUNDING = 1e-6  # float64 solve error allowed, relative to ‖W̄‖


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·G + (1 − α)·diag(G): off-diagonal entries scaled by α, diagonal kept."""
    if alpha == 1.0:
        return gram
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_solve(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], alpha: float, name: str = "", ridge: float = 0.0
) -> torch.Tensor:
    """RegMean for one linear weight ([out, in]) from (W_i, G_i) pairs, accumulated one Gram at a
    time and solved in float64 (result in fp32), with the ridge and reach check of the module docstring."""
    weights: list[torch.Tensor] = []
    lhs = rhs = None
    for weight, gram in pairs:
        g = shrink(gram.to(torch.float64, copy=True), alpha)  # a fresh tensor: lhs grows in place
        term = g @ weight.double().T
        lhs = g if lhs is None else lhs.add_(g)
        rhs = term if rhs is None else rhs.add_(term)
        weights.append(weight)
    mean = sum(w.double() for w in weights) / len(weights)
    strength = ridge * float(torch.diagonal(lhs).mean())
    lhs.diagonal().add_(strength)
    rhs.add_(mean.T, alpha=strength)
    try:
        merged = torch.linalg.solve(lhs, rhs).T
    except RuntimeError:  # torch.linalg.LinAlgError: singular system
        raise TensorValueError(
            f"RegMean: the summed Gram matrix of {name!r} is singular (an input feature is always 0); "
            f"lower alpha, {_raise_ridge(ridge)} or add calibration data"
        ) from None
    check_reach(merged, weights, mean, name, ridge)
    return merged.float()


def _raise_ridge(ridge: float) -> str:
    # 0.1 (the default) is what merged SmolLM2-135M's experts; 0.001 and 0.01 did not
    return f"raise ridge (now {ridge:g}; try {max(0.1, 10 * ridge):g})"


def check_reach(merged: torch.Tensor, weights: list[torch.Tensor], mean: torch.Tensor, name: str,
                ridge: float = 0.0) -> None:
    """Refuse a merge farther than ``REACH`` times the inputs' spread from their mean."""
    spread = max(float(torch.linalg.vector_norm(w.double() - mean)) for w in weights)
    distance = float(torch.linalg.vector_norm(merged - mean))
    limit = REACH * spread + ROUNDING * float(torch.linalg.vector_norm(mean))
    if not distance <= limit:  # also catches NaN
        raise TensorValueError(
            f"RegMean: merged tensor {name!r} is {distance:.3g} from the inputs' mean, more than {REACH:g}x "
            f"their spread ({spread:.3g}): its Grams are ill-conditioned; give more calibration data, "
            f"lower alpha or {_raise_ridge(ridge)}"
        )


@dataclass(frozen=True)
class GramsIndex:
    """What the pre-pass hands the kernel (``grams.json``): the solve's settings and, per pool
    model, the folder of its Grams (a TensorIndex-readable safetensors file)."""

    alpha: float
    ridge: float
    conv1d: list[str]  # tensors stored [in, out] (transformers' Conv1D)
    models: dict[str, str]  # model reference -> folder of its Grams

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: str | Path) -> "GramsIndex":
        return cls(**json.loads(Path(path).read_text()))

    @cached_property
    def indexes(self) -> dict[str, TensorIndex]:
        return {ref: TensorIndex.open(folder) for ref, folder in self.models.items()}

    @cached_property
    def conv1d_set(self) -> frozenset[str]:
        return frozenset(self.conv1d)


@lru_cache(maxsize=4)
def _grams_index(path: str) -> GramsIndex:
    return GramsIndex.read(path)


@dataclass(frozen=True)
class RegMeanMerge(GroupMergeMethod):
    @cached_property
    def spec(self) -> MergeMethodSpec:
        return MergeMethodSpec(
            name="regmean",
            pretty_name="RegMean (regression mean)",
            reference_url="https://arxiv.org/abs/2212.09849",
            parameters=(side_file_spec("grams", "the index of the Gram files"),),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
        )

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        grams = _grams_index(side_file("regmean", parameters, "grams"))
        name = group.metadata.name
        entries = group.non_base
        indexes = [grams.indexes.get(str(e.id)) for e in entries]
        out_dtype = group.base.tensor.dtype
        if all(ix is not None and name in ix.shapes for ix in indexes):
            conv1d = name in grams.conv1d_set
            pairs = ((e.tensor.T if conv1d else e.tensor, ix.tensor(name)) for e, ix in zip(entries, indexes))
            merged = regmean_solve(pairs, grams.alpha, name, grams.ridge)
            return (merged.T if conv1d else merged).to(out_dtype)
        return (sum(e.tensor.float() for e in entries) / len(entries)).to(out_dtype)


regmean = RegMeanMerge()
