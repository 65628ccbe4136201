"""Whether two models' tensors line up name for name and shape for shape: one rule, vocabulary policy chosen.

A difference in the first axis of a vocabulary tensor is a tokenizer question (mergekit can align
vocabularies); any other difference means no task vector exists. ``vocab="exact"`` reports both,
``vocab="tolerate"`` ignores the first kind. Structural differences are reported before vocabulary
ones, so a vocabulary mismatch is named only when it is the whole story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# Tensors whose first axis is the vocabulary.
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight", "wte.weight")

VocabPolicy = Literal["exact", "tolerate"]
Shapes = Mapping[str, Sequence[int]]


def is_vocab_tensor(name: str) -> bool:
    return name.endswith(VOCAB_TENSORS)


@dataclass(frozen=True)
class Mismatch:
    """The first difference of ``other`` from the base: ``kind`` is extra, missing, shape or vocab."""

    kind: Literal["extra", "missing", "shape", "vocab"]
    name: str
    shape: tuple[int, ...] | None = None  # other's
    base_shape: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.kind == "extra":
            return f"has tensor {self.name!r} that the base does not have"
        if self.kind == "missing":
            return f"lacks tensor {self.name!r} that the base has"
        shapes = f"tensor {self.name!r} has shape {list(self.shape)}, the base has {list(self.base_shape)}"
        if self.kind == "vocab":
            return f"vocabulary mismatch: {self.shape[0]} rows vs the base's {self.base_shape[0]} ({shapes})"
        return shapes


def first_mismatch(base: Shapes, other: Shapes, *, vocab: VocabPolicy) -> Mismatch | None:
    """The first way ``other`` fails to line up with ``base`` (names in sorted order), or None."""
    vocab_diffs = []
    for name in sorted(other):
        shape, mine = tuple(other[name]), base.get(name)
        if mine is None:
            return Mismatch("extra", name)
        mine = tuple(mine)
        if mine == shape:
            continue
        if is_vocab_tensor(name) and len(mine) == len(shape) > 0 and mine[1:] == shape[1:]:
            vocab_diffs.append(Mismatch("vocab", name, shape, mine))
        else:
            return Mismatch("shape", name, shape, mine)
    missing = sorted(set(base) - set(other))
    if missing:
        return Mismatch("missing", missing[0])
    return vocab_diffs[0] if vocab_diffs and vocab == "exact" else None
