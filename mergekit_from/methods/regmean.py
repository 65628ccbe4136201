"""RegMean as mergekit method ``regmean`` (Jin et al., ICLR 2023, arXiv:2212.09849).

For a linear weight W_i ([out, in]) with input Gram G_i of model i,

    G̃_i = α·G_i + (1 − α)·diag(G_i)            (off-diagonal shrink)
    W*  = ( (Σ G̃_i)⁻¹ Σ G̃_i W_iᵀ )ᵀ            (computed with a solve, in fp32)

and every tensor without Grams (embeddings, norms, biases) is the plain mean of the pool
models. The Grams come from the pre-pass in :mod:`mergekit_from.regmean_grams`, started by
``mergekit-from yaml``; this kernel reads one model's Gram at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from pydantic import BaseModel

from mergekit_from.errors import TensorValueError
from mergekit_from.methods.side_file import side_file, side_file_spec
from mergekit_from.weights import TensorIndex


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·G + (1 − α)·diag(G): off-diagonal entries scaled by α, diagonal kept."""
    if alpha == 1.0:
        return gram
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_solve(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], alpha: float, name: str = "") -> torch.Tensor:
    """RegMean for one linear weight from (W_i, G_i) pairs, accumulated one pair at a time."""
    lhs = rhs = None
    for weight, gram in pairs:
        g = shrink(gram.float(), alpha)
        term = g @ weight.float().T
        lhs = g.clone() if lhs is None else lhs.add_(g)
        rhs = term if rhs is None else rhs.add_(term)
    try:
        return torch.linalg.solve(lhs, rhs).T
    except RuntimeError:  # torch.linalg.LinAlgError: singular system
        raise TensorValueError(
            f"RegMean: the summed Gram matrix of {name!r} is singular (an input feature is always 0); "
            "lower alpha or add calibration data"
        ) from None


@lru_cache(maxsize=4)
def _grams_index(path: str) -> dict[str, Any]:
    """``{"alpha": α, "indexes": {model reference: TensorIndex of its Grams}}``."""
    data = json.loads(Path(path).read_text())
    data["indexes"] = {ref: TensorIndex.open(folder) for ref, folder in data["models"].items()}
    return data


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

    @property
    def settings_model(self) -> type[BaseModel]:
        """What a recipe sets for the pre-pass (section ``regmean:`` or ``parameters:``)."""
        from mergekit_from.regmean_grams import RegMeanSettings

        return RegMeanSettings

    def prepass(self, config, raw: dict[str, Any], recipe_dir: Path):
        from mergekit_from.regmean_grams import RegMeanPrePass

        return RegMeanPrePass(config, raw, recipe_dir)

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        grams = _grams_index(side_file("regmean", parameters, "grams"))
        name = group.metadata.name
        entries = group.non_base
        indexes = [grams["indexes"].get(str(e.id)) for e in entries]
        out_dtype = group.base.tensor.dtype
        if all(ix is not None and name in ix.shapes for ix in indexes):
            pairs = ((e.tensor, ix.tensor(name)) for e, ix in zip(entries, indexes))
            return regmean_solve(pairs, grams["alpha"], name).to(out_dtype)
        return (sum(e.tensor.float() for e in entries) / len(entries)).to(out_dtype)


regmean = RegMeanMerge()
