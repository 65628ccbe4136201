"""What the pre-passes fitted to target tasks (FW-Merging, AdaMerging) share: the pool, the
targets' calibration files and samples, the tokenizer, the recorded recipe's data copies, the
finite check of the objective, and the plan they hand to mergekit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from mergekit.config import InputModelDefinition, MergeConfiguration

from mergekit_from import calibration
from mergekit_from.errors import ConfigError, TensorValueError
from mergekit_from.finite import is_finite
from mergekit_from.methods.fw_plan import FWPlan
from mergekit_from.prepass.objective import load_skeleton, merge_parameters
from mergekit_from.prepass.pool import Pool
from mergekit_from.prepass.recipe_data import copy_data, resolve_path, set_setting
from mergekit_from.prepass.settings import TargetedSettings, read_settings


def _target_files(settings: TargetedSettings, recipe_dir: Path) -> dict[str, Path]:
    targets = settings.targets
    if isinstance(targets, list):
        targets = {Path(f).stem: f for f in targets}
    if not targets:
        raise ConfigError("targets: give at least one target task's calibration file")
    return {task: resolve_path(f, recipe_dir, "calibration file not found") for task, f in targets.items()}


class TargetedPrePass:
    """Reads and checks a recipe's pool, targets and tokenizer up front; subclasses optimise."""

    def __init__(self, method: str, model: type[TargetedSettings], config: MergeConfiguration, raw: dict[str, Any],
                 recipe_dir: Path):
        self.method = method
        self.quiet = False
        self.settings = read_settings(model, raw, config, section=method)
        self.pool = Pool.from_config(config, method, self.settings.skip_incompatible, adapters=True)
        self.config = self.pool.without_skipped(config)
        self.files = _target_files(self.settings, recipe_dir)
        self.samples = calibration.load_tasks(self.files, self.settings.samples_per_task)
        self.tokenizer_dir = None
        if self.settings.tokenizer:
            self.tokenizer_dir = resolve_path(self.settings.tokenizer, recipe_dir, "tokenizer folder not found",
                                              Path.is_dir)
        tok_dir = self.tokenizer_dir or Path(self.pool.base.root)
        self.tokenizer = calibration.load_tokenizer(tok_dir, self.settings.trust_remote_code)
        self.inputs = [*self.files.values(), *filter(None, [self.tokenizer_dir])]

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        copies = copy_data(list(self.files.items()), out_dir)
        set_setting(raw, self.method, "targets", dict(zip(self.files, copies)))
        if self.tokenizer_dir is not None:
            set_setting(raw, self.method, "tokenizer", str(self.tokenizer_dir.resolve()))

    def base_model(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
        """The base as a model, and its stored parameters, the only ones that take gradients."""
        model = load_skeleton(Path(self.pool.base.root), self.settings.trust_remote_code, role="base model")
        params = merge_parameters(model, self.pool.base)
        optimised = {id(p) for p in params.values()}
        for p in model.parameters():
            p.requires_grad_(id(p) in optimised)
        return model, params

    def finite(self, value: float, where: str, grads: dict[str, torch.Tensor] | None = None) -> float:
        """Stop when the objective (or its gradient) turns NaN/Inf: every later step would spread it.

        The weights read so far were checked, so the activations overflow on the calibration data.
        """
        if not math.isfinite(value) or not all(is_finite(g) for g in (grads or {}).values()):
            raise TensorValueError(
                f"{self.method}: the objective or its gradient turned NaN/Inf {where}: the model's "
                "activations overflow on the calibration data (check the weights of the pool and the base)"
            )
        return value

    def merge_config(self, plan: FWPlan, plan_path: Path) -> MergeConfiguration:
        """The recipe for mergekit: base, θ₀'s holder and the picked models only, plus the plan."""
        needed = plan.references() - {self.pool.base_ref}
        models = [m for m in self.config.models or () if str(m.model) in needed]
        present = {str(m.model) for m in models}
        models += [InputModelDefinition(model=r) for r in sorted(needed - present)]
        parameters = {**(self.config.parameters or {}), "plan": str(plan_path)}
        return self.config.model_copy(update={"models": models, "parameters": parameters})
