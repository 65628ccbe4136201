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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors import safe_open
from mergekit.config import MergeConfiguration
from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex
from mergekit.io.tasks import LoaderCache
from safetensors.torch import save_file

from mergekit_from.card import write_card
from mergekit_from.errors import AdapterError, ConfigError, ModelInputError
from mergekit_from.methods.from_merge import DEFAULT_K, from_merge_tensors
from mergekit_from.weights import TensorIndex
from zoo.adapter import CONFIG, WEIGHTS, LoraScaling, Part, base_weight_name, factor_key, split_key


def read_adapter_config(path: str | Path) -> tuple[Path, dict]:
    """A PEFT LoRA adapter folder's path and config, checked: safetensors weights, supported features."""
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
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r}")
    if config.get("use_dora"):
        problems.append("DoRA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r}")
    if config.get("modules_to_save"):
        problems.append("modules_to_save")
    if config.get("fan_in_fan_out"):  # B @ A would be the transposed update
        problems.append("fan_in_fan_out")
    if problems:
        raise AdapterError(f"{path}: unsupported adapter features: {', '.join(problems)}")
    return path, config


def factor_keys(path: Path, keys: Iterable[str]) -> dict[str, dict[Part, str]]:
    """module -> {"A": key, "B": key} of an adapter's safetensors keys; raises on anything else."""
    modules: dict[str, dict[Part, str]] = {}
    for key in keys:
        factor = split_key(key)
        if factor is None:
            raise AdapterError(f"{path}: unsupported adapter tensor {key!r} (only lora_A/lora_B of linear layers)")
        modules.setdefault(factor[0], {})[factor[1]] = key
    for module, parts in modules.items():
        if set(parts) != {"A", "B"}:
            raise AdapterError(f"{path}: module {module!r} lacks lora_{'A' if 'A' not in parts else 'B'}")
    if not modules:
        raise AdapterError(f"{path}: adapter holds no LoRA weights")
    return modules


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """One module's task vector s * B @ A in fp32."""
    return scale * (b.float() @ a.float())


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter folder (safetensors only), read eagerly: adapters are small."""

    path: Path
    config: dict
    factors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {"A", "B"}

    @classmethod
    def load(cls, path: str | Path) -> "LoraAdapter":
        adapter = cls(*read_adapter_config(path))
        with safe_open(str(adapter.path / WEIGHTS), framework="pt") as f:
            for module, keys in factor_keys(adapter.path, f.keys()).items():
                adapter.factors[module] = {part: f.get_tensor(key) for part, key in keys.items()}
        return adapter

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def scale(self, module: str) -> float:
        return LoraScaling(self.config).scale(module, rank=self.factors[module]["A"].shape[0])

    def delta(self, module: str) -> torch.Tensor:
        """The module's task vector s * B @ A in fp32."""
        parts = self.factors[module]
        return lora_delta(parts["A"], parts["B"], self.scale(module))

    def delta_shape(self, module: str) -> tuple[int, int]:
        parts = self.factors[module]
        return parts["B"].shape[0], parts["A"].shape[1]


@dataclass
class FoldedIndex:
    """A model with a LoRA adapter folded in, served one tensor at a time like a
    :class:`~mergekit_from.weights.TensorIndex`: ``W + s * B @ A`` where the adapter adapts ``W``,
    the model's own tensor elsewhere. Only the header is read up front; each fold reads one
    module's factors, so the adapted model is never whole in memory."""

    model: TensorIndex
    adapter: Path
    scaling: LoraScaling
    modules: dict[str, str]  # the model's tensor name -> the adapter's module

    @classmethod
    def open(cls, model: TensorIndex, adapter: str | Path) -> "FoldedIndex":
        path, config = read_adapter_config(adapter)
        modules: dict[str, str] = {}
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            for module, keys in factor_keys(path, f.keys()).items():
                name = base_weight_name(module, model.shapes)
                if name is None:
                    raise AdapterError(f"{path}: module {module!r} has no weight in {model.root}")
                shape = (f.get_slice(keys["B"]).get_shape()[0], f.get_slice(keys["A"]).get_shape()[1])
                if model.shapes[name] != shape:
                    raise AdapterError(f"{path}: module {module!r} is {list(shape)} but {model.root} has "
                                       f"{list(model.shapes[name])}")
                modules[name] = module
        return cls(model, path, LoraScaling(config), modules)

    @property
    def root(self) -> Path:
        return self.model.root

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.model.shapes

    @property
    def dtypes(self) -> dict[str, str]:
        return self.model.dtypes

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` with the adapter folded in (fp32 sum, the model's dtype), as PEFT's
        ``merge_and_unload`` writes it."""
        weight = self.model.tensor(name)
        module = self.modules.get(name)
        if module is None:
            return weight
        with safe_open(str(self.adapter / WEIGHTS), framework="pt") as f:
            a, b = f.get_tensor(factor_key(module, "A")), f.get_tensor(factor_key(module, "B"))
        delta = lora_delta(a, b, self.scaling.scale(module, rank=a.shape[0]))
        return (weight.float() + delta).to(weight.dtype)


class FoldedLoader(LazyTensorLoader):
    """mergekit's tensor loader for a ``model+adapter`` input that folds per tensor
    (:class:`FoldedIndex`); mergekit's own (``ModelReference.merged``) loads the whole model,
    merges it with PEFT and writes a full copy to its LoRA cache."""

    def __init__(self, folded: FoldedIndex):
        super().__init__(ShardedTensorIndex.from_disk(str(folded.root)))
        self.folded = folded

    def get_tensor(self, key: str, device: str = "cpu", aliases: list[str] | None = None,
                   raise_on_missing: bool = True) -> torch.Tensor | None:
        for name in (key, *(aliases or ())):
            if name in self.folded.shapes:
                return self.folded.tensor(name).to(device)
        if raise_on_missing:
            raise KeyError(key)
        return None


@contextmanager
def folded_adapters(config: MergeConfiguration) -> Iterator[None]:
    """Inside, mergekit reads the recipe's local ``model+adapter`` inputs through :class:`FoldedLoader`."""
    cache = LoaderCache()
    refs = [r for r in config.referenced_models()
            if r.lora is not None and r not in cache.loaders and TensorIndex.is_model_dir(r.model.path)]
    for ref in refs:
        cache.loaders[ref] = FoldedLoader(FoldedIndex.open(TensorIndex.open(ref.model.path), ref.lora.path))
    try:
        yield
    finally:
        for ref in refs:
            cache.loaders.pop(ref, None)


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
