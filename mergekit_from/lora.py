"""FroM on PEFT LoRA adapters: adapters in, one adapter out.

For every adapted module, adapter i contributes its task vector Delta_i = s_i * B_i @ A_i
(s_i = lora_alpha / r, or / sqrt(r) with rsLoRA). FroM merges the Delta_i exactly as it merges
full fine-tunes (the base weight cancels out of tau_i = W_i - W_base). The merged update has rank
up to n*r, so it is cut back to a chosen rank by truncated SVD: by Eckart-Young that is the exact
minimiser of the FroM objective among updates of that rank, since
sum_i w_i ||X - Delta_i||^2 = (sum_i w_i) ||X - Delta_bar||^2 + const.
The cut's relative Frobenius error is reported per module and overall.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_from.card import write_card
from mergekit_from.errors import AdapterError, ConfigError, ModelInputError
from mergekit_from.methods.from_merge import DEFAULT_K, from_merge_tensors
from mergekit_from.output import Output
from zoo.adapter import CONFIG, WEIGHTS, LoraScaling, base_weight_name, factor_key, split_key


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter folder (safetensors only), read eagerly: adapters are small."""

    path: Path
    config: dict
    factors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {"A", "B"}

    @classmethod
    def load(cls, path: str | Path) -> "LoraAdapter":
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ModelInputError(f"adapter path not found: {path}")
        if not (path / CONFIG).is_file():
            raise AdapterError(f"{path}: no {CONFIG}, not a PEFT adapter folder")
        if not (path / WEIGHTS).is_file():
            pickled = (path / "adapter_model.bin").is_file()
            why = "only a pickled adapter_model.bin, which is never unpickled" if pickled else f"no {WEIGHTS}"
            raise AdapterError(f"{path}: {why}")
        try:
            config = json.loads((path / CONFIG).read_text())
        except ValueError as exc:
            raise AdapterError(f"{path / CONFIG}: invalid JSON ({exc})") from None
        adapter = cls(path, config)
        adapter._check_supported()
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            for key in f.keys():
                factor = split_key(key)
                if factor is None:
                    raise AdapterError(f"{path}: unsupported adapter tensor {key!r} (only lora_A/lora_B of linear layers)")
                adapter.factors.setdefault(factor[0], {})[factor[1]] = f.get_tensor(key)
        for module, parts in adapter.factors.items():
            if set(parts) != {"A", "B"}:
                raise AdapterError(f"{path}: module {module!r} lacks lora_{'A' if 'A' not in parts else 'B'}")
        if not adapter.factors:
            raise AdapterError(f"{path}: adapter holds no LoRA weights")
        return adapter

    def _check_supported(self) -> None:
        c = self.config
        problems = []
        if c.get("peft_type", "LORA") != "LORA":
            problems.append(f"peft_type {c.get('peft_type')!r}")
        if c.get("use_dora"):
            problems.append("DoRA")
        if c.get("bias", "none") != "none":
            problems.append(f"bias={c.get('bias')!r}")
        if c.get("modules_to_save"):
            problems.append("modules_to_save")
        if problems:
            raise AdapterError(f"{self.path}: unsupported adapter features: {', '.join(problems)}")

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scale(self, module: str) -> float:
        return LoraScaling(self.config).scale(module, rank=self.factors[module]["A"].shape[0])

    def delta(self, module: str) -> torch.Tensor:
        """The module's task vector s * B @ A in fp32."""
        parts = self.factors[module]
        return self.scale(module) * (parts["B"].float() @ parts["A"].float())

    def delta_shape(self, module: str) -> tuple[int, int]:
        parts = self.factors[module]
        return parts["B"].shape[0], parts["A"].shape[1]


def _same_base(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return True  # nothing recorded: shapes are checked instead
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def check_distinct(adapters: Sequence[LoraAdapter]) -> None:
    """No adapter given twice, by path or as a copy: FroM would count its update twice."""
    seen: dict[str, LoraAdapter] = {}
    for adapter in adapters:
        digest = hashlib.sha256((adapter.path / WEIGHTS).read_bytes()).hexdigest()
        earlier = seen.setdefault(digest, adapter)
        if earlier is adapter:
            continue
        if earlier.path.resolve() == adapter.path.resolve():
            raise AdapterError(f"adapter {adapter.path} is given twice")
        raise AdapterError(f"adapters {earlier.path} and {adapter.path} hold identical weights (a duplicate)")


def check_adapters(adapters: Sequence[LoraAdapter], base: str | Path | None = None) -> None:
    """No duplicates, same recorded base, and consistent module shapes (against ``base``'s weights if given)."""
    check_distinct(adapters)
    first = adapters[0]
    for other in adapters[1:]:
        if not _same_base(first.base_model, other.base_model):
            raise AdapterError(
                f"adapters of different bases: {first.path} (base {first.base_model}) and "
                f"{other.path} (base {other.base_model})"
            )
    shapes: dict[str, tuple[tuple[int, int], Path]] = {}
    for adapter in adapters:
        for module in adapter.factors:
            shape = adapter.delta_shape(module)
            seen = shapes.setdefault(module, (shape, adapter.path))
            if seen[0] != shape:
                raise AdapterError(
                    f"module {module!r} is {list(shape)} in {adapter.path} but {list(seen[0])} in {seen[1]}: "
                    "adapters of different bases"
                )
    if base is not None:
        from mergekit_from.weights import TensorIndex

        index = TensorIndex.open(base)
        for module, (shape, path) in shapes.items():
            name = base_weight_name(module, index.shapes)
            if name is None:
                raise AdapterError(f"{path}: module {module!r} has no weight in base {base}")
            if index.shapes[name] != shape:
                raise AdapterError(
                    f"{path}: module {module!r} is {list(shape)} but base {base} has {list(index.shapes[name])}"
                )


def truncate(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factors (B, A) of ``delta`` with B @ A ~= delta; returns the residual norm."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    b = u[:, :r] * root
    a = root[:, None] * vh[:r]
    if r < rank:  # keep the declared rank: pad with zero directions
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], dim=0)
    residual = float(s[r:].double().square().sum().sqrt())
    return b, a, residual


def full_rank(adapters: Sequence[LoraAdapter], modules: Sequence[str]) -> int:
    """The highest rank any module's merged update can have: the sum of the ranks of the adapters
    that adapt it, capped by its shape. One rank serves every module (PEFT's ``r``); modules whose
    update has a lower rank are padded with zero directions, so a higher rank only adds zeros."""
    def most(module: str) -> int:
        ranks = sum(a.factors[module]["A"].shape[0] for a in adapters if module in a.factors)
        shape = next(a.delta_shape(module) for a in adapters if module in a.factors)
        return min(ranks, *shape)

    return max(most(m) for m in modules)


@dataclass
class LoraMergeReport:
    rank: int
    relative_error: float  # ||Delta_bar - BA||_F / ||Delta_bar||_F over all modules
    max_module_relative_error: float
    modules: dict[str, dict]

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "relative_error": self.relative_error,
            "max_module_relative_error": self.max_module_relative_error,
            "modules": self.modules,
        }


def merge_adapters(
    adapters: Sequence[LoraAdapter],
    *,
    k: float = DEFAULT_K,
    scale: float = 1.0,
    priors: Sequence[float] | None = None,
    rank: int | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], LoraMergeReport]:
    """FroM-merge the adapters' task vectors per module and cut each to ``rank``.

    Returns module -> (A, B) factors (scale 1: the output's lora_alpha equals its rank)
    and a report with the per-module FroM weights and rank-cut errors.
    """
    if not adapters:
        raise ConfigError("no adapters to merge")
    if priors is not None and len(priors) != len(adapters):
        raise ConfigError(f"{len(priors)} weights given for {len(adapters)} adapters")
    if k < 0 or not math.isfinite(k):
        raise ConfigError(f"k must be a finite number >= 0, got {k}")
    modules = sorted({m for a in adapters for m in a.factors})
    most = full_rank(adapters, modules)
    if rank is None:
        rank = min(most, max(p["A"].shape[0] for a in adapters for p in a.factors.values()))
    if not 1 <= rank <= most:
        raise ConfigError(
            f"rank must be between 1 and {most}, the merged update's full rank (input ranks summed, "
            f"capped by each module's shape), got {rank}"
        )
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    report: dict[str, dict] = {}
    total_sq = resid_sq = 0.0
    for module in modules:
        shape = next(a.delta_shape(module) for a in adapters if module in a.factors)
        deltas = [a.delta(module) if module in a.factors else torch.zeros(shape) for a in adapters]
        merged = from_merge_tensors(
            torch.zeros(shape), deltas, k=k, scale=scale, priors=priors,
            names=[str(a.path) for a in adapters], tensor_name=module,
        )
        b, a_, residual = truncate(merged, rank)
        norm = float(merged.double().norm())
        factors[module] = (a_, b)
        total_sq += norm**2
        resid_sq += residual**2
        report[module] = {
            "norms": [float(d.norm()) for d in deltas],
            "relative_error": residual / norm if norm > 0 else 0.0,
        }
    rel = math.sqrt(resid_sq / total_sq) if total_sq > 0 else 0.0
    worst = max((m["relative_error"] for m in report.values()), default=0.0)
    return factors, LoraMergeReport(rank, rel, worst, report)


def write_adapter(
    out: Path,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    template: LoraAdapter,
    rank: int,
    sources: Sequence[LoraAdapter],
    report: LoraMergeReport,
    params: dict,
) -> None:
    """Write a PEFT adapter folder (config, safetensors, card, merge report) into ``out``."""
    dtype = next(iter(template.factors.values()))["A"].dtype
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[factor_key(module, "A")] = a.to(dtype).contiguous()
        tensors[factor_key(module, "B")] = b.to(dtype).contiguous()
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    targets = sorted({m.rsplit(".", 1)[-1] for m in factors})
    config = dict(template.config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={}, target_modules=targets)
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (out / "merge_report.json").write_text(json.dumps({"params": params, **report.to_json()}, indent=2) + "\n")
    base = template.base_model or "unknown"
    body = "\n".join([
        "# Merged LoRA adapter",
        "",
        f"FroM merge ([arXiv:2506.02478](https://arxiv.org/abs/2506.02478)) of {len(sources)} LoRA adapters of "
        f"`{base}`, re-factorised at rank {rank} by truncated SVD "
        f"(relative Frobenius error of the rank cut: {report.relative_error:.3e}).",
        "",
        "Sources:",
        *[f"- `{s.path}`" for s in sources],
        "",
        f"Parameters: `{json.dumps(params)}`",
    ])
    write_card(out, body, base_model=base, library_name="peft", tags=["merge", "mergekit-from", "from", "lora"])
