"""NaN/Inf guards: no non-finite value reaches a written model, and the culprit is named.

Where non-finite values can enter a merge, and what stops them:

- an input tensor: the pre-passes read inputs through :func:`checked` (FW-Merging's base and
  pool, RegMean's models); FroM's kernel names the input behind a non-finite norm
  (:func:`name_non_finite_input`);
- a computed value: FW-Merging's objective and gradient each iteration, RegMean's Grams;
- the merged tensors: :func:`check_output` reads every tensor mergekit wrote into the staged
  output before ``mergekit-from yaml`` commits it, whatever the method (ours or mergekit's),
  and names the tensor, the method and, where one is to blame, the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from mergekit.config import MergeConfiguration

from mergekit_from.errors import TensorValueError
from mergekit_from.weights import TensorIndex


def is_finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _where(tensor_name: str | None) -> str:
    return f"tensor {tensor_name!r}" if tensor_name else "a tensor"


def checked(tensor: torch.Tensor, who: str, tensor_name: str) -> torch.Tensor:
    """``tensor`` unchanged, or an error naming ``who`` (e.g. ``model '/path'``) and the tensor."""
    if not is_finite(tensor):
        raise TensorValueError(f"{who} has NaN/Inf values in {_where(tensor_name)}")
    return tensor


def name_non_finite_input(
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    names: Sequence[str] | None,
    tensor_name: str | None,
    base_name: str | None = None,
) -> None:
    """Raise naming the first input (base first) with NaN/Inf; returns only if all are finite."""
    if base is not None:
        checked(base, "base model" + (f" {base_name!r}" if base_name else ""), tensor_name)
    for i, t in enumerate(tensors):
        checked(t, f"model {names[i] if names else f'input #{i}'!r}", tensor_name)


def check_output(folder: Path, config: MergeConfiguration) -> None:
    """Refuse a merged model with a non-finite tensor: name the tensor, the method and the input.

    The inputs' tensor of the same name is blamed only for a ``models:`` recipe; with slices,
    output layers are renumbered and a same-named input tensor may be another layer.
    """
    for name, tensor in _written_tensors(folder):
        if is_finite(tensor):
            continue
        blamed = not config.slices and not config.modules
        if blamed:
            _blame_inputs(config, name)
        raise TensorValueError(
            f"merge_method {config.merge_method!r} produced NaN/Inf values in tensor {name!r}"
            + (" from finite inputs" if blamed else "") + "; nothing was written"
        )


def _written_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged tensors one at a time: safetensors, or the pickles of ``--no-safe-serialization``
    (written by this run, so loading them is safe)."""
    if TensorIndex.is_model_dir(folder):
        index = TensorIndex.open(folder)
        for name in index.shapes:
            yield name, index.tensor(name)
        return
    for shard in sorted(folder.glob("pytorch_model*.bin")):
        yield from torch.load(shard, map_location="cpu", weights_only=True, mmap=True).items()


def _blame_inputs(config: MergeConfiguration, name: str) -> None:
    refs = ([config.base_model] if config.base_model else []) + [m.model for m in config.models or ()]
    local = [r for r in dict.fromkeys(refs) if r.lora is None and TensorIndex.is_model_dir(r.model.path)]
    indexes = {str(r): TensorIndex.open(r.model.path) for r in local}
    present = {ref: ix for ref, ix in indexes.items() if name in ix.shapes}
    base_ref = str(config.base_model) if config.base_model else None
    base = present.pop(base_ref).tensor(name) if base_ref in present else None
    name_non_finite_input(base, [ix.tensor(name) for ix in present.values()], list(present), name, base_ref)
