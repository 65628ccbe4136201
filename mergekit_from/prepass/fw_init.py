"""FW-Merging's starting point θ₀: the base, a given model folder, or a combination of the pool
(task arithmetic or TIES with ``init_lambda``, or FroM with ``from_k``) written to a work folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from mergekit.merge_methods.generalized_task_arithmetic import get_mask
from mergekit.sparsify import SparsificationMethod, sparsify
from safetensors.torch import save_file

from mergekit_from.errors import ModelInputError
from mergekit_from.finite import checked
from mergekit_from.methods.from_pool import tensor_coefficients
from mergekit_from.prepass.pool import Pool, layout_mismatch, ref_string
from mergekit_from.prepass.progress import progress
from mergekit_from.prepass.recipe_data import resolve_path
from mergekit_from.prepass.settings import INIT_KEYWORDS, FWSettings
from mergekit_from.weights import TensorIndex

INITIAL_DIR = "fw_initial"


def check_init(settings: FWSettings, pool: Pool, recipe_dir: Path) -> Path | None:
    """The model folder ``init:`` names (None for a keyword), with the base's layout."""
    init = settings.init
    if init in INIT_KEYWORDS:
        return None
    path = resolve_path(init, recipe_dir, f"init: neither one of {'|'.join(INIT_KEYWORDS)} nor a model folder",
                        TensorIndex.is_model_dir)
    problem = layout_mismatch(pool.base, TensorIndex.open(path))
    if problem:
        raise ModelInputError(f"init model {init} is incompatible with the base: {problem}")
    return path


@dataclass
class InitialPoint:
    settings: FWSettings
    pool: Pool
    init_dir: Path | None  # the model folder ``init:`` names, if any
    quiet: bool = False
    weights: dict[str, list[float]] = field(default_factory=dict)  # per tensor, each source's weight

    def apply(self, params: dict[str, torch.nn.Parameter], work_dir: Path) -> tuple[TensorIndex, str]:
        """Set the iterate to θ₀; returns where θ₀ lives on disk (base, init model, or written)."""
        s, pool = self.settings, self.pool
        if s.init != "base" and self.init_dir is None:
            return self._combine(params, work_dir)
        index = pool.base if s.init == "base" else TensorIndex.open(self.init_dir)
        who = f"base model {pool.base_ref!r}" if s.init == "base" else f"init model {str(self.init_dir)!r}"
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(checked(index.tensor(name).float(), who, name))
        return index, (pool.base_ref if s.init == "base" else ref_string(str(self.init_dir)))

    def coefficients(self, name: str) -> dict[str, float]:
        """θ₀'s coefficients on the sources' task vectors for tensor ``name``."""
        if self.settings.init == "base":
            return {}
        if self.init_dir is not None:
            return {ref_string(str(self.init_dir)): 1.0}
        return dict(zip(self.pool.refs, self.weights[name]))

    def _source_weights(self, name: str) -> list[float]:
        s = self.settings
        if s.init in ("task_arithmetic", "ties"):  # ties: nominal, the trimmed entries are not all there
            return [s.init_lambda] * len(self.pool)
        return tensor_coefficients(self.pool, name, k=s.from_k).tolist()

    def _ties(self, name: str, b: torch.Tensor) -> torch.Tensor:
        """base + λ·Σ of the trimmed task vectors that agree with the elected sign (mergekit's trim
        and sign election per tensor; the official code trims over the flattened model)."""
        s = self.settings
        deltas = torch.stack([sparsify(self.pool.tensor(i, name) - b, s.ties_density, SparsificationMethod.magnitude)
                              for i in range(len(self.pool))])
        merged = (deltas * get_mask(deltas, "sum")).sum(0)
        return b + s.init_lambda * merged

    def _combine(self, params: dict[str, torch.nn.Parameter], work_dir: Path) -> tuple[TensorIndex, str]:
        """θ₀ = base + Σ w_i τ_i per tensor, copied into ``params`` and written to ``work_dir``."""
        pool, base = self.pool, self.pool.base
        values: dict[str, torch.Tensor] = {}
        for name in progress(base.shapes, f"init ({self.settings.init})", quiet=self.quiet):
            if not base.tensor(name).is_floating_point():
                values[name] = base.tensor(name)
                continue
            b = pool.base_tensor(name)
            self.weights[name] = weights = self._source_weights(name)
            if self.settings.init == "ties":
                acc = self._ties(name, b)
            else:
                acc = b.clone()
                for i, w in enumerate(weights):
                    if w:
                        acc.add_(pool.tensor(i, name) - b, alpha=w)
            acc = acc.to(base.tensor(name).dtype)
            if name in params:
                with torch.no_grad():
                    params[name].copy_(acc)
                values[name] = params[name].detach()
            else:
                values[name] = acc
        out = work_dir / INITIAL_DIR
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in values.items()}, str(out / "model.safetensors"), {"format": "pt"})
        (out / "config.json").write_text((Path(base.root) / "config.json").read_text())
        return TensorIndex.open(out), ref_string(str(out))
