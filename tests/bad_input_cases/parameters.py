"""Parameters `mergekit-from yaml` must refuse: typos in the plugin's keys, keys where they do
nothing, and invalid values inside mergekit's filters and gradients."""

from __future__ import annotations

from tests.bad_input_cases import Case, Run
from tests.bad_input_cases.recipe import from_recipe, yaml_run


def _from(env, where: str = "top", **params) -> dict:
    """A FroM recipe over models a and b with ``params`` at the top level or on model a."""
    if where == "top":
        return from_recipe(env, env.tiny["a"], env.tiny["b"], **params)
    recipe = from_recipe(env, env.tiny["a"], env.tiny["b"])
    recipe["models"][0]["parameters"] = params
    return recipe


def _prepass(env, method: str, section: dict | None = None, per_model: dict | None = None, **params) -> dict:
    """A pre-pass method's recipe; it is refused before the pre-pass reads data, so none is given."""
    recipe = {"merge_method": method, "base_model": str(env.tiny["base"]),
              "models": [{"model": str(env.tiny["a"])}, {"model": str(env.tiny["b"])}]}
    if per_model:
        recipe["models"][0]["parameters"] = per_model
    if params:
        recipe["parameters"] = params
    if section is not None:
        recipe[method] = section
    return recipe


def _slices(env, **params) -> dict:
    tiny = env.tiny
    return {"merge_method": "from", "base_model": str(tiny["base"]), "slices": [{"sources": [
        {"model": str(tiny[n]), "layer_range": [0, 2]} for n in ("base", "a", "b")], "parameters": params}]}


def _filter(value, other=1.0, on: str = "mlp") -> list[dict]:
    return [{"filter": on, "value": value}, {"value": other}]


UNKNOWN = "unknown parameter"
INVALID = "is invalid for merge_method"
CMD = "mergekit-from yaml recipe.yml OUT  # "

CASES = [
    Case("params-lamda-typo", CMD + "from, parameters: {lamda: 0.5}", UNKNOWN,
         lambda env: yaml_run(env, _from(env, lamda=0.5), "did you mean 'lambda'?")),
    Case("params-model-key-typo", CMD + "from, models[a].parameters: {wieght: 0.5}", UNKNOWN,
         lambda env: yaml_run(env, _from(env, "model", wieght=0.5), "'wieght'")),
    Case("params-shared-key-on-a-model", CMD + "from, models[a].parameters: {k: 4}", "belongs in the top-level",
         lambda env: yaml_run(env, _from(env, "model", k=4), "'k'")),
    Case("params-slice-key-typo", CMD + "from with slices, slices[0].parameters: {lamda: 0.5}", UNKNOWN,
         lambda env: yaml_run(env, _slices(env, lamda=0.5), "slices[0].parameters: unknown parameter 'lamda'")),
    Case("params-filter-negative-k", CMD + "k: [{filter: mlp, value: -1}, {value: 1}]", INVALID,
         lambda env: yaml_run(env, _from(env, k=_filter(-1)), "k=-1 (filter 'mlp')")),
    Case("params-unfiltered-condition", CMD + "k: [{value: -2}]", INVALID,
         lambda env: yaml_run(env, _from(env, k=[{"value": -2}]), "k=-2")),
    Case("params-filter-bogus-scope", CMD + "scope: [{filter: norm, value: bogus}, {value: all}]", INVALID,
         lambda env: yaml_run(env, _from(env, scope=_filter("bogus", "all", "norm")), "scope='bogus' (filter 'norm')")),
    Case("params-filter-zero-lambda", CMD + "lambda: [{filter: self_attn, value: 0}, {value: 1}]", INVALID,
         lambda env: yaml_run(env, _from(env, **{"lambda": _filter(0, on="self_attn")}),
                              "lambda=0 (filter 'self_attn')")),
    Case("params-negative-weight-in-filtered-gradient",
         CMD + "models[a].parameters: {weight: [{filter: mlp, value: [1, -0.5]}, {value: 1}]}", INVALID,
         lambda env: yaml_run(env, _from(env, "model", weight=_filter([1, -0.5])), "weight=-0.5 (filter 'mlp')")),
    Case("params-fw-setting-typo", CMD + "fw_hard, parameters: {max_iter: 3}", UNKNOWN,
         lambda env: yaml_run(env, _prepass(env, "fw_hard", {"targets": ["t.jsonl"]}, max_iter=3),
                              "did you mean 'max_iters'?")),
    Case("params-fw-side-file", CMD + "fw_soft, parameters: {plan: plan.json}", UNKNOWN,
         lambda env: yaml_run(env, _prepass(env, "fw_soft", {"targets": ["t.jsonl"]}, plan="plan.json"), "'plan'")),
    Case("params-fw-per-model-weight", CMD + "fw_hard, models[a].parameters: {weight: 0.5}", UNKNOWN,
         lambda env: yaml_run(env, _prepass(env, "fw_hard", {"targets": ["t.jsonl"]}, {"weight": 0.5}),
                              "'weight' for merge_method 'fw_hard' (accepted: none)")),
    Case("params-regmean-calibration-typo", CMD + "regmean, models[a].parameters: {calibraton: a.jsonl}", UNKNOWN,
         lambda env: yaml_run(env, _prepass(env, "regmean", per_model={"calibraton": "a.jsonl"}),
                              "did you mean 'calibration'?")),
    Case("params-regmean-grams", CMD + "regmean, parameters: {grams: g.json}", UNKNOWN,
         lambda env: yaml_run(env, _prepass(env, "regmean", grams="g.json"), "'grams'")),
]
