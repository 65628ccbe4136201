"""FroM's coefficients over a whole pool, read one tensor at a time.

The one place that applies the kernel's rule (:func:`~mergekit_from.methods.from_merge.tensor_weights`
with ``k``, ``scope`` and the per-model priors) outside a merge: FW-Merging's ``init: from`` builds
θ₀ from it, and ``auto`` writes its size-averaged figures on the model card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import torch
from mergekit.merge_methods.base import TensorMetadata

from mergekit_from.methods.from_merge import DEFAULT_K, Scope, tensor_weights, uses_norms
from mergekit_from.weights import TensorIndex


class StreamedPool(Protocol):
    """A base and sources whose tensors are read on demand, in fp32."""

    base: TensorIndex

    def __len__(self) -> int: ...

    def tensor(self, i: int, name: str) -> torch.Tensor: ...

    def base_tensor(self, name: str) -> torch.Tensor: ...


@dataclass
class FolderPool:
    """A :class:`StreamedPool` over model folders, as written (no checks beyond the merge's own)."""

    base: TensorIndex
    sources: list[TensorIndex]

    def __len__(self) -> int:
        return len(self.sources)

    def tensor(self, i: int, name: str) -> torch.Tensor:
        return self.sources[i].tensor(name).float()

    def base_tensor(self, name: str) -> torch.Tensor:
        return self.base.tensor(name).float()


def architecture_metadata(model_dir: Path) -> dict[str, TensorMetadata]:
    """mergekit's per-tensor metadata (vocabulary axes) for the architecture in ``model_dir``:
    what ``scope: linear`` looks at."""
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    arch = arch_info_for_config(config)
    return {w.name: TensorMetadata.from_weight_info(w) for w in (arch.all_weights(config) if arch else ())}


def tensor_coefficients(
    pool: StreamedPool,
    name: str,
    *,
    k: float = DEFAULT_K,
    priors: Sequence[float] | None = None,
    scope: Scope = "all",
    metadata: Mapping[str, TensorMetadata] | None = None,
) -> torch.Tensor:
    """Each source's FroM weight for tensor ``name`` (floating), as the merge applies it (before
    ``lambda``); one source tensor is held at a time."""
    prior_t = torch.tensor([1.0] * len(pool) if priors is None else list(priors), dtype=torch.float64)
    b = pool.base_tensor(name)
    norms = torch.tensor([float((pool.tensor(i, name) - b).norm()) for i in range(len(pool))])
    use = uses_norms(scope, len(pool.base.shapes[name]), (metadata or {}).get(name, TensorMetadata(name=name)))
    return tensor_weights(norms, prior_t, k, use)


def mean_coefficients(base_dir: Path, model_dirs: Sequence[Path], parameters: Mapping[str, Any],
                      priors: Sequence[float] | None = None) -> list[float]:
    """FroM's coefficient per source, as a ``from`` recipe with ``parameters`` applies it (k, lambda,
    scope; ``priors`` or the top-level ``weight``), averaged over floating tensors by size."""
    base = TensorIndex.open(base_dir)
    pool = FolderPool(base, [TensorIndex.open(p) for p in model_dirs])
    priors = priors or [parameters.get("weight", 1.0)] * len(pool)
    scale = parameters.get("lambda", 1.0)
    totals = torch.zeros(len(pool), dtype=torch.float64)
    size = 0
    rule = {"k": parameters.get("k", DEFAULT_K), "priors": priors, "scope": parameters.get("scope", "all"),
            "metadata": architecture_metadata(base_dir)}
    for name, shape in base.shapes.items():
        if base.tensor(name).is_floating_point():
            n = math.prod(shape)
            totals += tensor_coefficients(pool, name, **rule) * scale * n
            size += n
    return [round(float(v / size), 6) for v in totals]
