"""The pool a pre-pass reads: model references made absolute, the base and the candidates as
:class:`~mergekit_from.weights.TensorIndex` views checked for identical tensor layouts, with
candidates *streamed* one tensor at a time."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mergekit.common import ModelReference
from mergekit.config import InputModelDefinition, MergeConfiguration

from mergekit_from.errors import ConfigError, ModelInputError
from mergekit_from.finite import checked
from mergekit_from.lora import FoldedIndex
from mergekit_from.weights import TensorIndex
from zoo.layout import first_mismatch

LOG = logging.getLogger(__name__)


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
    return str(absolute_reference(InputModelDefinition(model=path).model))


def _local_dir(ref: ModelReference, role: str) -> Path:
    if ref.lora is not None:
        raise ConfigError(f"{role} {ref}: LoRA inputs are not supported by this method; merge the adapter first")
    path = Path(ref.model.path).expanduser()
    if not path.exists():
        raise ModelInputError(f"{role} not found on disk: {ref.model.path}")
    if not TensorIndex.is_model_dir(path):
        raise ModelInputError(f"{role} {ref.model.path} has no safetensors weights")
    return path


def _open_member(ref: ModelReference, base_ref: ModelReference, base: TensorIndex,
                 adapters: bool) -> TensorIndex | FoldedIndex:
    """A pool model: a folder, or (``adapters``) ``model+adapter`` folded per tensor on demand."""
    if ref.lora is None or not adapters:
        return TensorIndex.open(_local_dir(ref, "pool model"))
    model = base if ref.model == base_ref.model else TensorIndex.open(_local_dir(ModelReference(model=ref.model),
                                                                                   "pool model"))
    return FoldedIndex.open(model, ref.lora.path)


def layout_mismatch(base: TensorIndex, other: TensorIndex | FoldedIndex) -> str | None:
    """The first tensor whose presence or shape differs from the base (exact, vocabulary included)."""
    mismatch = first_mismatch(base.shapes, other.shapes, vocab="exact")
    return None if mismatch is None else str(mismatch)


@dataclass
class Pool:
    """The base and the candidate models, read lazily: candidates are streamed tensor by tensor."""

    base_ref: str
    base: TensorIndex
    refs: list[str]
    indexes: list[TensorIndex | FoldedIndex]
    skipped: list[str] = field(default_factory=list)
    finite: set[tuple[int, str]] = field(default_factory=set)  # (candidate, tensor) already checked

    @classmethod
    def from_config(cls, config: MergeConfiguration, method: str, skip_incompatible: bool = False,
                    adapters: bool = False) -> "Pool":
        """The pool of a recipe whose base model :func:`mergekit_from.recipe.check_base` checked;
        with ``adapters``, ``model+adapter`` references are members, folded per tensor when read."""
        if config.slices or config.modules:
            raise ConfigError(f"merge_method {method!r} takes a models: list (slices/modules are not supported)")
        base = TensorIndex.open(_local_dir(config.base_model, "base model"))
        refs, indexes, skipped = [], [], []
        for m in config.models or ():
            if m.model == config.base_model:
                continue
            index = _open_member(m.model, config.base_model, base, adapters)
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
        """Candidate ``i``'s tensor ``name`` in fp32, read from its memory-mapped shard (checked
        finite on its first read: FW reads every candidate at every iteration)."""
        t = self.indexes[i].tensor(name).float()
        if (i, name) not in self.finite:
            checked(t, f"pool model {self.refs[i]!r}", name)
            self.finite.add((i, name))
        return t

    def base_tensor(self, name: str) -> torch.Tensor:
        return checked(self.base.tensor(name).float(), f"base model {self.base_ref!r}", name)

    def without_skipped(self, config: MergeConfiguration) -> MergeConfiguration:
        if not self.skipped:
            return config
        models = [m for m in config.models or () if str(m.model) not in self.skipped]
        return config.model_copy(update={"models": models})
