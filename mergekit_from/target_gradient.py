"""A target's FW gradient at the base, per task and per tensor, computed once and cached.

The gradient of the FW objective (the pre-passes' own: :mod:`mergekit_from.prepass.objective`) at
the base is FW's first LMO signal; probes (:mod:`zoo.probe`) score candidates against it before any
download. Two backward passes per task: the first measures every tensor's gradient mass, which
chooses the probe subset; the second keeps the gradient of the subset only. Holding every task's
full gradient between the two would cost tasks x model size in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergekit_from import calibration
from mergekit_from.prepass.objective import TaskBatches, load_skeleton, merge_parameters, task_objective
from mergekit_from.prepass.settings import FWSettings
from mergekit_from.weights import TensorIndex
from zoo.gradient import TargetGradient, gradient_key, gradients_dir
from zoo.probe import DEFAULT_BUDGET, choose_subset

# The objective settings that change the gradient, with the FW pre-pass's defaults.
SETTINGS = ("objective", "samples_per_task", "max_length", "batch_size")


def objective_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The FW defaults for :data:`SETTINGS`, with any of them given in ``overrides`` (auto's ``--set``)."""
    return {k: (overrides or {}).get(k, FWSettings.model_fields[k].default) for k in SETTINGS}


def calibration_digest(files: Mapping[str, Path]) -> str:
    h = hashlib.sha256()
    for task, path in files.items():
        h.update(f"{task}\0".encode())
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()


def content_digest(model_dir: Path) -> str:
    """A base without a Hub commit is named by its weights' bytes."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def target_gradient(base_dir: Path, base: str, base_sha: str | None, files: Mapping[str, Path],
                    settings: Mapping[str, Any] | None = None, budget: float = DEFAULT_BUDGET,
                    cache: Path | None = None) -> TargetGradient:
    """The cached gradient of (base, calibration, settings), computed now if absent."""
    settings = objective_settings(settings)
    digest = base_sha or content_digest(base_dir)
    key = gradient_key(digest, calibration_digest(files), {**settings, "budget": budget})
    cached = TargetGradient.cached(key, cache)
    if cached is not None:
        return cached
    torch.manual_seed(0)
    samples = calibration.load_tasks(dict(files), settings["samples_per_task"])
    tokenizer = calibration.load_tokenizer(base_dir)
    tasks = TaskBatches.of(samples, tokenizer, settings["max_length"], settings["batch_size"])
    model = load_skeleton(Path(base_dir), role="base model")
    index = TensorIndex.open(base_dir)
    params = merge_parameters(model, index)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    shapes = {n: list(p.shape) for n, p in params.items()}
    nbytes = {n: p.numel() * index.tensor(n).element_size() for n, p in params.items()}  # as stored
    mass = {task: {n: float(g.double().square().sum()) for n, g in _task_gradient(model, params, tasks, k,
                                                                                   settings["objective"]).items()}
            for k, task in enumerate(samples)}
    budget_bytes = int(budget * sum(nbytes.values()))
    subset = choose_subset(mass, nbytes, shapes, budget_bytes)
    grads = {task: {n: g[: subset[n]].numpy().copy() for n, g in _task_gradient(
        model, params, tasks, k, settings["objective"]).items() if n in subset} for k, task in enumerate(samples)}
    base_arrays = {n: params[n].detach()[: subset[n]].numpy().astype(np.float32) for n in subset}
    grad = TargetGradient(key, base, list(samples), settings, shapes, nbytes, mass, subset,
                          budget_bytes, grads, base_arrays)
    grad.write(cache or gradients_dir())
    return grad


def _task_gradient(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], tasks: TaskBatches, k: int,
                   objective: str) -> dict[str, torch.Tensor]:
    """Gradient of task ``k``'s mean per-sample loss at the model's current weights (FW soft's per-task signal)."""
    model.zero_grad(set_to_none=True)
    task_objective(model, [tasks.batches[k]], [tasks.counts[k]], objective, backward=True)
    grads = {n: (p.grad.detach().float() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return grads
