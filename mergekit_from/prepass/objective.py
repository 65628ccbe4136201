"""Shared pieces of the whole-model pre-passes (FW-Merging, RegMean) that run before mergekit.

mergekit 0.1.5 calls a merge method one tensor at a time, so a method that needs the whole
model (a loss, a gradient, activations) computes what it needs here first; its per-tensor
kernel then applies the result inside mergekit's executor. This module holds what both
pre-passes share:

- reading the plugin's settings from a recipe (top-level ``parameters:`` or a section named
  after the method), validated by a pydantic model into one-line errors;
- the pool: base and candidates as :class:`~mergekit_from.weights.TensorIndex` views, checked
  for identical tensor layouts, with candidates *streamed* one tensor at a time;
- a causal-LM harness (a model skeleton built from the base's config, never remote code unless
  asked) with the two objectives: response cross-entropy and prompt entropy.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, TypeVar

import torch
import torch.nn.functional as F
from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions
from pydantic import BaseModel, ValidationError

from mergekit_from import calibration
from mergekit_from.calibration import IGNORE, Batch
from mergekit_from.errors import ConfigError, ModelInputError, one_line
from mergekit_from.finite import checked
from mergekit_from.weights import TensorIndex

LOG = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseModel)


class PrePass(Protocol):
    """What a merge method with a pre-pass hands to :func:`mergekit_from.recipe.run_recipe`."""

    config: MergeConfiguration  # the recipe as checked (e.g. without skipped pool models)
    inputs: list[Path]  # what it reads besides the models: data files, init model, tokenizer

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        """Make the recipe ``raw`` re-run from anywhere: copy the data into ``out_dir``, point the
        settings at the copies (relative to ``out_dir``) and make other paths absolute."""

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        """Compute, write side files into ``out_dir`` / ``work_dir``; return the config to merge."""


def read_settings(model: type[S], raw: dict[str, Any], config: MergeConfiguration, section: str) -> S:
    """Settings from top-level ``parameters:`` (keys the model knows) and the ``section:`` mapping.

    A key given in both places is an error rather than a silent precedence rule.
    """
    values: dict[str, Any] = {k: v for k, v in (config.parameters or {}).items() if k in model.model_fields}
    extra = raw.get(section)
    if extra is not None:
        if not isinstance(extra, dict):
            raise ConfigError(f"recipe section {section!r} must be a mapping")
        both = sorted(set(values) & set(extra))
        if both:
            raise ConfigError(f"setting {both[0]!r} is given both in parameters: and in {section}:")
        values.update(extra)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{section} settings: {one_line(exc)}") from None


def resolve_path(path: str, recipe_dir: Path, what: str, accept: Callable[[Path], bool] = Path.exists) -> Path:
    """A data path of a recipe (calibration file, init model, tokenizer): taken relative to the
    recipe's folder first, then to the working directory. ``what`` starts the error, which names
    every place looked at."""
    p = Path(path).expanduser()
    places = [p] if p.is_absolute() else list(dict.fromkeys([recipe_dir / p, Path.cwd() / p]))
    found = next((place for place in places if accept(place)), None)
    if found is None:
        looked = "" if places == [Path(path)] else f" (looked in {', '.join(map(str, places))})"
        raise ConfigError(f"{what}: {path}{looked}")
    return found


DATA_DIR = "calibration"  # where an output keeps the data its recorded recipe reads


def copy_data(files: Sequence[tuple[str, Path]], out_dir: Path) -> list[str]:
    """Copy data files into ``out_dir/calibration/`` as ``<stem>.jsonl`` (stems made unique) so that
    the output's recorded recipe re-runs from anywhere; returns the copies' paths relative to ``out_dir``."""
    (out_dir / DATA_DIR).mkdir(exist_ok=True)
    copies: list[str] = []
    for stem, src in files:
        stem = re.sub(r"[^\w.-]+", "_", stem) or "data"
        name, n = f"{stem}.jsonl", 1
        while f"{DATA_DIR}/{name}" in copies:
            n += 1
            name = f"{stem}-{n}.jsonl"
        shutil.copyfile(src, out_dir / DATA_DIR / name)
        copies.append(f"{DATA_DIR}/{name}")
    return copies


def set_setting(raw: dict[str, Any], section: str, key: str, value: Any) -> None:
    """Rewrite a setting where the recipe gave it (top-level ``parameters:`` or ``section:``)."""
    if key in (raw.get("parameters") or {}):
        raw["parameters"][key] = value
    else:
        raw.setdefault(section, {})[key] = value


def absolute_reference(ref: ModelReference) -> ModelReference:
    """Local paths made absolute: mergekit's card generator asks the Hub about any relative
    path without two slashes, which fails (and aborts the merge) on an offline machine."""

    def fix(mp):
        p = Path(mp.path).expanduser()
        return mp.model_copy(update={"path": str(p.resolve())}) if p.exists() and not p.is_absolute() else mp

    return ref.model_copy(update={"model": fix(ref.model), "lora": fix(ref.lora) if ref.lora else None})


def ref_string(path: str) -> str:
    """How a recipe's model reference reaches the merge (``str(TensorEntry.id)``): local paths
    are made absolute before anything runs."""
    from mergekit.config import InputModelDefinition

    return str(absolute_reference(InputModelDefinition(model=path).model))


def _local_dir(ref, role: str) -> Path:
    if ref.lora is not None:
        raise ConfigError(f"{role} {ref}: LoRA inputs are not supported by this method; merge the adapter first")
    path = Path(ref.model.path).expanduser()
    if not path.exists():
        raise ModelInputError(f"{role} not found on disk: {ref.model.path}")
    if not TensorIndex.is_model_dir(path):
        raise ModelInputError(f"{role} {ref.model.path} has no safetensors weights")
    return path


def layout_mismatch(base: TensorIndex, other: TensorIndex) -> str | None:
    """The first tensor whose presence or shape differs from the base (exact, vocabulary included)."""
    for name, shape in base.shapes.items():
        if name not in other.shapes:
            return f"lacks tensor {name!r}"
        if other.shapes[name] != shape:
            return f"tensor {name!r} has shape {list(other.shapes[name])}, the base has {list(shape)}"
    for name in other.shapes:
        if name not in base.shapes:
            return f"has tensor {name!r} that the base does not have"
    return None


@dataclass
class Pool:
    """The base and the candidate models, read lazily: candidates are streamed tensor by tensor."""

    base_ref: str
    base: TensorIndex
    refs: list[str]
    indexes: list[TensorIndex]
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: MergeConfiguration, method: str, skip_incompatible: bool = False) -> "Pool":
        if config.slices or config.modules:
            raise ConfigError(f"merge_method {method!r} takes a models: list (slices/modules are not supported)")
        if config.base_model is None:
            raise ConfigError(f"merge_method {method!r} needs a base_model")
        base = TensorIndex.open(_local_dir(config.base_model, "base model"))
        refs, indexes, skipped = [], [], []
        for m in config.models or ():
            if m.model == config.base_model:
                continue
            index = TensorIndex.open(_local_dir(m.model, "pool model"))
            problem = layout_mismatch(base, index)
            if problem:
                if not skip_incompatible:
                    raise ModelInputError(
                        f"pool model {m.model} is incompatible with the base: {problem} "
                        "(set skip_incompatible: true to leave it out)"
                    )
                LOG.warning("skipping pool model %s: %s", m.model, problem)
                skipped.append(str(m.model))
                continue
            refs.append(str(m.model))
            indexes.append(index)
        if not refs:
            raise ConfigError(f"merge_method {method!r}: the pool is empty (no usable models besides the base)")
        return cls(str(config.base_model), base, refs, indexes, skipped)

    def __len__(self) -> int:
        return len(self.refs)

    def tensor(self, i: int, name: str) -> torch.Tensor:
        """Candidate ``i``'s tensor ``name`` in fp32, read from its memory-mapped shard (finite)."""
        return checked(self.indexes[i].tensor(name).float(), f"pool model {self.refs[i]!r}", name)

    def base_tensor(self, name: str) -> torch.Tensor:
        return checked(self.base.tensor(name).float(), f"base model {self.base_ref!r}", name)

    def without_skipped(self, config: MergeConfiguration) -> MergeConfiguration:
        if not self.skipped:
            return config
        models = [m for m in config.models or () if str(m.model) not in self.skipped]
        return config.model_copy(update={"models": models})


def load_skeleton(base_dir: Path, trust_remote_code: bool = False, role: str = "model") -> torch.nn.Module:
    """The architecture of the model in ``base_dir``, in fp32 with its weights, in eval mode.

    A non-finite weight is an error naming ``role`` (e.g. "base model"), the folder and the tensor.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
    except Exception as exc:  # an unknown architecture is a user problem, not a crash
        raise ModelInputError(f"cannot build a causal LM from {base_dir}/config.json: {one_line(exc)}") from None
    index = TensorIndex.open(base_dir)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, stored in stored_names(model, index).items():
            params[name].copy_(checked(index.tensor(stored), f"{role} {str(base_dir)!r}", stored))
    model.eval()
    return model


def stored_names(model: torch.nn.Module, index: TensorIndex) -> dict[str, str]:
    """Parameter name -> the name its tensor is stored under: the same, or without the model's
    ``base_model_prefix`` (GPT-2 checkpoints store ``h.0.…`` for ``transformer.h.0.…``)."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    names = {}
    for name, _ in model.named_parameters():
        stored = name if name in index.shapes else name.removeprefix(prefix)
        if stored in index.shapes:
            names[name] = stored
    return names


def merge_parameters(model: torch.nn.Module, index: TensorIndex) -> dict[str, torch.nn.Parameter]:
    """The model parameters that are stored tensors: these are what the pre-passes optimise."""
    return {name: p for name, p in model.named_parameters() if name in index.shapes}


def sample_losses(logits: torch.Tensor, batch: Batch, objective: str) -> torch.Tensor:
    """Per-sample loss [B]: mean CE over response tokens, or mean entropy over prompt tokens."""
    logits = logits[:, :-1].float()
    if objective == "cross_entropy":
        labels = batch.labels[:, 1:]
        tok = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        mask = (labels != IGNORE).float()
    elif objective == "entropy":
        logp = torch.log_softmax(logits, dim=-1)
        tok = -(logp.exp() * logp).sum(-1)
        mask = batch.prompt_mask[:, :-1].float()
    else:  # guarded by the settings' Literal types
        raise ValueError(objective)
    return (tok * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def batch_loss(model: torch.nn.Module, batch: Batch, objective: str, params: dict | None = None) -> torch.Tensor:
    """Sum of per-sample losses of one batch (``params`` swaps in tensors via functional_call)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if params is None:
        logits = model(**inputs).logits
    else:
        logits = torch.func.functional_call(model, params, args=(), kwargs=inputs, strict=False).logits
    return sample_losses(logits, batch, objective).sum()


def task_objective(
    model: torch.nn.Module,
    tasks: Sequence[Sequence[Batch]],
    counts: Sequence[int],
    objective: str,
    backward: bool,
) -> float:
    """Mean over tasks of the mean per-sample loss; accumulates gradients when ``backward``."""
    total = 0.0
    for task_batches, n in zip(tasks, counts):
        for batch in task_batches:
            with torch.set_grad_enabled(backward):
                loss = batch_loss(model, batch, objective) / (n * len(tasks))
                if backward:
                    loss.backward()
            total += loss.item()
    return total


def calibration_losses(model_dir: Path, files: dict[str, Path], tokenizer_dir: Path, limit: int = 100,
                       batch_size: int = 8) -> dict[str, float]:
    """Mean response cross-entropy per task of the model in ``model_dir`` on its calibration files."""
    tokenizer = calibration.load_tokenizer(tokenizer_dir)
    model = load_skeleton(Path(model_dir))
    losses = {}
    for task, samples in calibration.load_tasks(files, limit).items():
        encoded = calibration.encode(samples, tokenizer)
        batches = list(calibration.batches(encoded, batch_size, tokenizer.pad_token_id))
        losses[task] = task_objective(model, [batches], [len(encoded)], "cross_entropy", backward=False)
    return losses


def progress(iterable: Iterable, desc: str, total: int | None = None, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=quiet, leave=False)
