"""Read-only views of a model folder's safetensors weights: names, shapes, dtypes, lazy tensors.

Only safetensors are read (never pickles). Headers are read without loading tensors, so
shape checks and fingerprints cost a few kilobytes of I/O per model; tensors are memory-mapped
one at a time on request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from mergekit_from.errors import ModelInputError
from zoo.arrays import INDEX, SINGLE, is_model_dir
from zoo.layout import first_mismatch, is_vocab_tensor

# Weights that only torch.load reads: unpickling can run code, so they are read only on request.
PICKLE_FILES = ["*.bin", "*.pt", "*.pth"]


def weight_files_state(folder: str | Path) -> list[list[str | int]]:
    """A folder's weight files as [name, size, mtime]: what a cache of weights derived from them is keyed by, so an
    input rewritten in place (an adapter retrained) misses it. Empty for a path that is no local folder (a Hub id,
    whose revision names its content)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    files = sorted(f for pattern in ["*.safetensors", *PICKLE_FILES] for f in root.glob(pattern))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def refuse_pickles(folder: str | Path) -> None:
    """Raise naming the pickled weights of a folder that has no safetensors (``--allow-pickle`` skips this)."""
    root = Path(folder).expanduser()
    if not root.is_dir() or any(root.glob("*.safetensors")):
        return
    pickled = sorted(f for pattern in PICKLE_FILES for f in root.glob(pattern))
    if pickled:
        raise ModelInputError(
            f"{pickled[0]}: pickled weights and no safetensors in {root}; loading a pickle can run code. "
            "Convert it to safetensors (save_pretrained(..., safe_serialization=True)), or pass --allow-pickle "
            "if you trust it"
        )


@dataclass
class TensorIndex:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    is_model_dir = staticmethod(is_model_dir)

    @classmethod
    def open(cls, path: str | Path) -> "TensorIndex":
        root = Path(path).expanduser()
        if (root / INDEX).is_file():
            try:
                weight_map = json.loads((root / INDEX).read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ModelInputError(f"{root / INDEX}: unreadable shard index ({exc})") from None
            shards = sorted(set(weight_map.values()))
        elif (root / SINGLE).is_file():
            shards = [SINGLE]
        else:
            raise ModelInputError(f"no safetensors weights in {root}")
        index = cls(root)
        for shard in shards:
            file = root / shard
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        sl = f.get_slice(name)
                        index.files[name] = file
                        index.shapes[name] = tuple(sl.get_shape())
                        index.dtypes[name] = sl.get_dtype()
            except Exception as exc:  # safetensors raises its own error types
                raise ModelInputError(f"{file}: unreadable safetensors file ({exc})") from None
        return index

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor, memory-mapped from its shard."""
        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def check_compatible(self, other: "TensorIndex", label: str) -> None:
        """Raise naming the first tensor of ``other`` that cannot merge with this base. Vocabulary
        sizes may differ: mergekit aligns them through the recipe's tokenizer settings
        (:meth:`check_same_vocab` when there are none)."""
        mismatch = first_mismatch(self.shapes, other.shapes, vocab="tolerate")
        if mismatch is not None:
            raise ModelInputError(f"model {label!r} is incompatible with the base: {mismatch}")

    def check_same_vocab(self, other: "TensorIndex", label: str, reference: str) -> None:
        """Raise naming the first vocabulary tensor whose size in ``other`` differs from this one's.

        Only a recipe's ``tokenizer:``/``tokenizer_source:`` settings let mergekit align them;
        without one it stops mid-merge with "Tensor size mismatch"."""
        for name, shape in sorted(other.shapes.items()):
            mine = self.shapes.get(name)
            if is_vocab_tensor(name) and mine is not None and mine[0] != shape[0]:
                raise ModelInputError(
                    f"model {label!r} has a {shape[0]}-token vocabulary ({name!r} is {list(shape)}) but {reference} "
                    f"has {mine[0]} ({list(mine)}); set `tokenizer_source: base` or a `tokenizer:` section in the "
                    "recipe so mergekit aligns the vocabularies"
                )
