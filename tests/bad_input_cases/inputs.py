"""Inputs that `yaml` and `eval` must refuse before loading a tensor: no models, duplicates, a
vocabulary mismatch without tokenizer settings, pickled weights, missing folders, unknown tasks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.bad_input_cases import Case, Run
from tests.bad_input_cases.recipe import from_recipe, yaml_run


def pickled_copy(model: Path, out: Path) -> Path:
    """``model`` with its weights as pytorch_model.bin only (what older Hub repos hold)."""
    out.mkdir()
    torch.save(load_file(str(model / "model.safetensors")), out / "pytorch_model.bin")
    (out / "config.json").write_text((model / "config.json").read_text())
    return out


def wider_vocab(model: Path, out: Path, rows: int = 16) -> Path:
    """``model`` with ``rows`` more tokens: embed_tokens and lm_head grow, everything else is the same."""
    out.mkdir()
    sd = load_file(str(model / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[name] = torch.cat([sd[name], torch.zeros(rows, sd[name].shape[1])])
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + rows}))
    return out


def _vocab(env) -> Run:
    wide = wider_vocab(env.tiny["a"], env.tmp / "wide")
    return yaml_run(env, from_recipe(env, env.tiny["a"], wide), str(wide))


def _vocab_no_base(env) -> Run:
    wide = wider_vocab(env.tiny["a"], env.tmp / "wide")
    recipe = {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1.0}}
                                                   for m in (env.tiny["a"], wide)]}
    return yaml_run(env, recipe, str(wide))


def _duplicate_slice_source(env) -> Run:
    src = {"model": str(env.tiny["a"]), "layer_range": [0, 2]}
    recipe = {"merge_method": "linear", "slices": [{"sources": [src, src]}], "parameters": {"weight": 1.0}}
    return yaml_run(env, recipe, "slices[0].sources")


def _pickled_yaml(env) -> Run:
    pickled = pickled_copy(env.tiny["b"], env.tmp / "pickled")
    return Run(yaml_run(env, from_recipe(env, env.tiny["a"], pickled)).argv, protect=[env.tmp / "out", pickled],
               culprit=str(pickled / "pytorch_model.bin"))


def _pickled_eval(env) -> Run:
    pickled = pickled_copy(env.tiny["a"], env.tmp / "pickled")
    return Run(["eval", str(pickled), "--tasks", "reverse", "--n", "2"], protect=[pickled],
               culprit=str(pickled / "pytorch_model.bin"))


CASES = [
    Case("yaml-empty-models", "mergekit-from yaml recipe.yml OUT  # models: []", "is empty",
         lambda env: yaml_run(env, {"merge_method": "from", "base_model": str(env.tiny["base"]), "models": []},
                              "`models:`")),
    Case("yaml-empty-slices", "mergekit-from yaml recipe.yml OUT  # slices: []", "is empty",
         lambda env: yaml_run(env, {"merge_method": "linear", "slices": []}, "`slices:`")),
    Case("yaml-no-models", "mergekit-from yaml recipe.yml OUT  # neither models nor slices",
         "Exactly one of 'models', 'slices', or 'modules' must be present",
         lambda env: yaml_run(env, {"merge_method": "linear"}, "bad.yml")),
    Case("yaml-duplicate-model", "mergekit-from yaml recipe.yml OUT  # the same model listed twice",
         "is listed twice", lambda env: yaml_run(env, from_recipe(env, env.tiny["a"], env.tiny["a"]),
                                                 str(env.tiny["a"]))),
    Case("yaml-duplicate-model-spelling", "mergekit-from yaml recipe.yml OUT  # `ft_a` and `./ft_a`: one model twice",
         "is listed twice", lambda env: Run(yaml_run(env, from_recipe(env, "ft_a", "./ft_a")).argv,
                                            protect=[env.tmp / "out"], culprit=str(env.tiny["a"]), cwd=env.tiny["a"].parent)),
    Case("yaml-duplicate-slice-source", "mergekit-from yaml recipe.yml OUT  # one slice lists a model twice",
         "is listed twice", _duplicate_slice_source),
    Case("yaml-vocab-mismatch", "mergekit-from yaml recipe.yml OUT  # a model with 16 more tokens, no tokenizer:",
         "set `tokenizer_source: base` or a `tokenizer:` section", _vocab),
    Case("yaml-vocab-mismatch-no-base", "mergekit-from yaml recipe.yml OUT  # linear, vocabularies differ",
         "-token vocabulary", _vocab_no_base),
    Case("yaml-pickled-model", "mergekit-from yaml recipe.yml OUT  # a model with only pytorch_model.bin",
         "pass --allow-pickle", _pickled_yaml),
    Case("eval-pickled-model", "mergekit-from eval PICKLED --tasks reverse  # only pytorch_model.bin",
         "pass --allow-pickle", _pickled_eval),
    Case("eval-missing-model", "mergekit-from eval nowhere --tasks reverse", "folder not found",
         lambda env: Run(["eval", str(env.tmp / "nowhere"), "--tasks", "reverse"], culprit="nowhere"), fixtures=()),
    Case("eval-missing-tokenizer", "mergekit-from eval MODEL --tasks reverse --tokenizer nowhere",
         "--tokenizer: folder not found",
         lambda env: Run(["eval", str(env.tiny["a"]), "--tasks", "reverse", "--tokenizer", str(env.tmp / "nowhere")],
                         culprit="nowhere")),
    Case("eval-unknown-task", "mergekit-from eval MODEL --tasks nosuch", "unknown task",
         lambda env: Run(["eval", str(env.tiny["a"]), "--tasks", "nosuch"], culprit="'nosuch'")),
    Case("eval-no-tasks", "mergekit-from eval MODEL --tasks ,", "give at least one task name",
         lambda env: Run(["eval", str(env.tiny["a"]), "--tasks", ","], culprit="--tasks")),
]
