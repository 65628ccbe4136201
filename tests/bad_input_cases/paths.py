"""Data paths of FW-Merging and RegMean recipes (issue 11 item 5): relative to the recipe's folder,
then to the working directory; a path found in neither is an error naming every place looked at.
Data a run reads is an input, so an output folder holding it is refused."""

from __future__ import annotations

from tests.bad_input_cases import Case, Run
from tests.fixtures.fw_experts import experts, fw_recipe
from tests.fixtures.models import write_recipe


LOOKED = "(looked in "


def _fw(**settings) -> dict:
    recipe = fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=1)
    recipe["fw_hard"].update(settings)
    return recipe


def _from_elsewhere(env, recipe: dict, culprit: str) -> Run:
    """The recipe in ``recipes/``, run from ``elsewhere/``; OUT must stay absent."""
    folder, cwd = env.tmp / "recipes", env.tmp / "elsewhere"
    folder.mkdir()
    cwd.mkdir()
    cfg = write_recipe(folder / "r.yml", recipe)
    out = env.tmp / "out"
    return Run(["yaml", str(cfg), str(out), "--quiet"], protect=[out, cfg], culprit=str(folder / culprit), cwd=cwd)


def _regmean(env) -> Run:
    z = experts()
    recipe = {"merge_method": "regmean", "base_model": str(z["base"]),
              "models": [{"model": str(z["expert_reverse"]), "parameters": {"calibration": "data/reverse.jsonl"}},
                         {"model": str(z["expert_maxchar"]), "parameters": {"calibration": str(z["data_maxchar"])}}]}
    return _from_elsewhere(env, recipe, "data/reverse.jsonl")


def _out_holds_calibration(env) -> Run:
    data = env.tmp / "data"
    data.mkdir()
    reverse = data / "reverse.jsonl"
    reverse.write_bytes(experts()["data_reverse"].read_bytes())
    cfg = write_recipe(env.tmp / "r.yml", _fw(targets={"reverse": "data/reverse.jsonl"}))
    return Run(["yaml", str(cfg), str(data), "--quiet"], protect=[data, cfg], culprit=str(reverse))


CASES = [
    Case("fw-calibration-nowhere", "cd elsewhere && mergekit-from yaml ../recipes/r.yml OUT  "
         "# targets: data/reverse.jsonl", "calibration file not found: data/reverse.jsonl (looked in ",
         lambda env: _from_elsewhere(env, _fw(targets={"reverse": "data/reverse.jsonl"}), "data/reverse.jsonl"),
         fixtures=()),
    Case("regmean-calibration-nowhere", "cd elsewhere && mergekit-from yaml ../recipes/r.yml OUT  "
         "# calibration: data/reverse.jsonl", "calibration file not found: data/reverse.jsonl (looked in ", _regmean,
         fixtures=()),
    Case("fw-init-nowhere", "cd elsewhere && mergekit-from yaml ../recipes/r.yml OUT  # init: ./my_init",
         "nor a model folder: ./my_init (looked in ",
         lambda env: _from_elsewhere(env, _fw(init="./my_init"), "my_init"), fixtures=()),
    Case("fw-tokenizer-nowhere", "cd elsewhere && mergekit-from yaml ../recipes/r.yml OUT  # tokenizer: tok",
         "tokenizer folder not found: tok (looked in ",
         lambda env: _from_elsewhere(env, _fw(tokenizer="tok"), "tok"), fixtures=()),
    Case("fw-out-holds-calibration", "mergekit-from yaml recipe.yml data/  # targets: data/reverse.jsonl",
         "contains the run's input", _out_holds_calibration, fixtures=()),
]
