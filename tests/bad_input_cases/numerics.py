"""NaN/Inf and blown-up merges: the run stops with exit 2 naming the culprit, and writes nothing.

Inputs with NaN/Inf (pool, base, init model), finite weights whose activations overflow on the
calibration data (FW objective, RegMean Grams), a merged tensor that overflows from finite
inputs (a mergekit built-in run through `mergekit-from yaml`), and a RegMean whose Grams are
ill-conditioned (a few large-magnitude activation channels, as real LLMs have).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from tests.bad_input_cases import Case, Run
from tests.bad_input_cases.recipe import yaml_run
from tests.fixtures.fw_experts import experts, fw_recipe


TENSOR = "model.layers.0.mlp.down_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"  # scales the inputs of q/k/v: the calibration sees it
HUGE = 3e38  # finite in fp32; its activations are not


def edited(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of the model folder ``src`` with its weights changed by ``edit``."""
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def poisoned(src: Path, dst: Path, name: str = TENSOR, value: float = float("nan")) -> Path:
    def put(sd):
        sd[name].view(-1)[3] = value

    return edited(src, dst, put)


def regmean_recipe(models: list[Path], data: list[Path], **settings) -> dict:
    return {"merge_method": "regmean", "base_model": str(experts()["base"]), "dtype": "float32",
            "models": [{"model": str(m)} for m in models],
            "regmean": {"calibration": {str(m): str(d) for m, d in zip(models, data)}, **settings}}


def fw_with_pool_model(method: str, model: Path, **settings) -> dict:
    recipe = fw_recipe(method, ["reverse", "maxchar"], ["reverse"], max_iters=1, samples_per_task=4, **settings)
    recipe["models"][0] = {"model": str(model)}
    return recipe


def _fw_nan_in_pool(method: str, **settings):
    def build(env) -> Run:
        bad = poisoned(experts()["expert_reverse"], env.tmp / "nan_expert")
        return yaml_run(env, fw_with_pool_model(method, bad, **settings), f"pool model '{bad}'")

    return build


def _fw_nan_in_base(env) -> Run:
    bad = poisoned(experts()["base"], env.tmp / "nan_base")
    recipe = fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=1, samples_per_task=4)
    recipe["base_model"] = str(bad)
    return yaml_run(env, recipe, f"base model '{bad}'")


def _fw_inf_in_init_model(env) -> Run:
    bad = poisoned(experts()["expert_maxchar"], env.tmp / "inf_init", NORM, float("inf"))
    recipe = fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=1, samples_per_task=4, init=str(bad))
    return yaml_run(env, recipe, f"init model '{bad}'")


def _fw_overflow(env) -> Run:
    loud = poisoned(experts()["expert_reverse"], env.tmp / "loud_expert", NORM, HUGE)
    return yaml_run(env, fw_with_pool_model("fw_hard", loud), "iteration 0 (targets reverse)")


def _regmean_nan_in_pool(env) -> Run:
    z = experts()
    bad = poisoned(z["expert_reverse"], env.tmp / "nan_expert")
    return yaml_run(env, regmean_recipe([bad, z["expert_maxchar"]], [z["data_reverse"], z["data_maxchar"]]),
                    f"pool model '{bad}' has NaN/Inf values in tensor '{TENSOR}'")


def _regmean_overflow(env) -> Run:
    z = experts()
    loud = poisoned(z["expert_reverse"], env.tmp / "loud_expert", NORM, HUGE)
    return yaml_run(env, regmean_recipe([loud, z["expert_maxchar"]], [z["data_reverse"], z["data_maxchar"]]),
                    f"for pool model '{loud}'")


def massive_channels(sd: dict[str, torch.Tensor], factor: float = 1e3) -> None:
    """A few activation channels ``factor`` times larger than the rest, in every layer."""
    for layer in range(2):
        sd[f"model.layers.{layer}.mlp.up_proj.weight"][:3] *= factor
        sd[f"model.layers.{layer}.input_layernorm.weight"][:2] *= factor


def nudged(src: Path, dst: Path, seed: int, rel: float = 1e-3) -> Path:
    """An 'expert' ``rel`` of each weight matrix's norm away from ``src``."""
    def move(sd):
        g = torch.Generator().manual_seed(seed)
        for name, t in sd.items():
            if t.ndim == 2:
                noise = torch.randn(t.shape, generator=g)
                sd[name] = t + rel * t.norm() * noise / noise.norm()

    return edited(src, dst, move)


def _regmean_blown_up(env) -> Run:
    z = experts()
    base = edited(z["base"], env.tmp / "massive_base", massive_channels)
    nudged_experts = [nudged(base, env.tmp / f"expert{i}", seed=i) for i in (1, 2)]
    recipe = regmean_recipe(nudged_experts, [z["data_reverse"], z["data_maxchar"]], ridge=0)
    recipe["base_model"] = str(base)
    return yaml_run(env, recipe, "model.layers.")


def _builtin_nan_in_input(env) -> Run:
    bad = poisoned(env.tiny["a"], env.tmp / "nan_model")
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in (bad, env.tiny["b"])]}
    return yaml_run(env, recipe, f"model '{bad}' has NaN/Inf values in tensor '{TENSOR}'")


def _builtin_nan_pickled_output(env) -> Run:
    run = _builtin_nan_in_input(env)
    return Run([*run.argv, "--no-safe-serialization"], run.protect, run.culprit)


def _builtin_overflow(env) -> Run:
    def big(sd):
        sd[TENSOR].view(-1)[0] = HUGE

    a, b = (edited(env.tiny[k], env.tmp / f"big_{k}", big) for k in ("a", "b"))
    recipe = {"merge_method": "task_arithmetic", "base_model": str(env.tiny["base"]), "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in (a, b)]}
    return yaml_run(env, recipe, f"'task_arithmetic' produced NaN/Inf values in tensor '{TENSOR}'")


NAN = "has NaN/Inf values in tensor"
CASES = [
    Case("fw_hard-nan-in-pool-model", "mergekit-from yaml fw_hard.yml OUT  # a pool model holds a NaN", NAN,
         _fw_nan_in_pool("fw_hard"), fixtures=()),
    Case("fw_soft-nan-in-pool-model", "mergekit-from yaml fw_soft.yml OUT  # a pool model holds a NaN", NAN,
         _fw_nan_in_pool("fw_soft", ada_iters=2), fixtures=()),
    Case("fw_hard-nan-in-base", "mergekit-from yaml fw_hard.yml OUT  # the base holds a NaN", NAN, _fw_nan_in_base,
         fixtures=()),
    Case("fw_hard-inf-in-init-model", "mergekit-from yaml fw_hard.yml OUT  # init: a model folder holding an Inf",
         NAN, _fw_inf_in_init_model, fixtures=()),
    Case("fw_hard-objective-overflows", "mergekit-from yaml fw_hard.yml OUT  # a norm weight of 3e38 (finite)",
         "the objective or its gradient turned NaN/Inf", _fw_overflow, fixtures=()),
    Case("regmean-nan-in-pool-model", "mergekit-from yaml regmean.yml OUT  # a pool model holds a NaN", NAN,
         _regmean_nan_in_pool, fixtures=()),
    Case("regmean-gram-overflows", "mergekit-from yaml regmean.yml OUT  # a norm weight of 3e38 (finite)",
         "has NaN/Inf values: its activations overflow", _regmean_overflow, fixtures=()),
    Case("regmean-blown-up", "mergekit-from yaml regmean.yml OUT  # ridge: 0, a few 1000x activation channels",
         "more than 10x their spread", _regmean_blown_up, fixtures=()),
    Case("linear-nan-in-input", "mergekit-from yaml linear.yml OUT  # a mergekit built-in; an input holds a NaN",
         NAN, _builtin_nan_in_input),
    Case("linear-nan-in-input-bin-output", "mergekit-from yaml linear.yml OUT --no-safe-serialization  # a NaN input",
         NAN, _builtin_nan_pickled_output),
    Case("task_arithmetic-overflows", "mergekit-from yaml ta.yml OUT  # finite inputs whose sum overflows",
         "from finite inputs; nothing was written", _builtin_overflow),
]
