"""Recipes that `mergekit-from yaml` must refuse before it writes anything."""

from __future__ import annotations

from pathlib import Path

from tests.bad_input_cases import Case, Run
from tests.fixtures.models import write_recipe


def from_recipe(env, *models, **params) -> dict:
    return {"merge_method": "from", "base_model": str(env.tiny["base"]),
            "models": [{"model": str(m)} for m in models], "parameters": params}


def yaml_run(env, recipe: dict, culprit: str | None = None, *extra: str) -> Run:
    """``yaml bad.yml OUT`` in the case's folder; OUT must stay absent."""
    cfg = write_recipe(env.tmp / "bad.yml", recipe)
    out = env.tmp / "out"
    return Run(["yaml", str(cfg), str(out), "--no-copy-tokenizer", "--quiet", *extra], protect=[out, cfg],
               culprit=culprit)


CASES = [
    Case("yaml-no-base", "mergekit-from yaml recipe.yml OUT  # from without base_model", "needs a base_model",
         lambda env: yaml_run(env, {"merge_method": "from", "models": [{"model": str(env.tiny["a"])}]}, "'from'")),
    Case("yaml-negative-k", "mergekit-from yaml recipe.yml OUT  # k: -1", "is invalid for merge_method",
         lambda env: yaml_run(env, from_recipe(env, env.tiny["a"], env.tiny["b"], k=-1), "k=-1")),
    Case("yaml-unknown-method", "mergekit-from yaml recipe.yml OUT  # merge_method: frm", "unknown merge_method",
         lambda env: yaml_run(env, {"merge_method": "frm", "base_model": str(env.tiny["base"]),
                                    "models": [{"model": str(env.tiny["a"])}]}, "'frm'")),
    Case("yaml-missing-model", "mergekit-from yaml recipe.yml OUT  # a model path that does not exist",
         "model path not found", lambda env: yaml_run(env, from_recipe(env, env.tiny["a"], env.tmp / "nowhere"),
                                                      str(Path("nowhere")))),
    Case("yaml-recipe-missing", "mergekit-from yaml none.yml OUT", "recipe not found",
         lambda env: Run(["yaml", str(env.tmp / "none.yml"), str(env.tmp / "out")], [env.tmp / "out"], "none.yml"),
         fixtures=()),
    Case("yaml-invalid-yaml", "mergekit-from yaml broken.yml OUT  # merge_method: [from", "not valid YAML",
         lambda env: Run(["yaml", str(_write(env.tmp / "broken.yml", "merge_method: [from\n")), str(env.tmp / "out")],
                         [env.tmp / "out"], "broken.yml"), fixtures=()),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
