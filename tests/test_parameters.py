"""mergekit's parameter syntax through `mergekit-from yaml`: filters and gradients on the plugin's
parameters, built-in recipes that give what `mergekit-yaml` gives, and `methods` listing every setting."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from mergekit.scripts.run_yaml import main as mergekit_yaml

from mergekit_from.output import MARKER
from mergekit_from.prepass.settings import HardSettings, RegMeanSettings, SoftSettings

from tests.fixtures.models import load_model, merge, run_cli, write_recipe


def from_recipe(tiny, **params) -> dict:
    return {"merge_method": "from", "base_model": str(tiny["base"]),
            "models": [{"model": str(tiny[n])} for n in "abc"], "parameters": params, "dtype": "float32"}


def with_setting(tiny, key: str, value) -> dict:
    """A FroM recipe with ``key`` set where it lives: top level, or on model a for ``weight``."""
    recipe = from_recipe(tiny)
    if key == "weight":
        recipe["models"][0]["parameters"] = {"weight": value}
    else:
        recipe["parameters"] = {key: value}
    return recipe


@pytest.mark.parametrize("key, matched, other, where", [
    ("k", 4.0, 1.0, "mlp"),
    ("lambda", 0.5, 1.0, "self_attn"),
    ("weight", 0.0, 1.0, "mlp"),
    ("scope", "linear", "all", "norm"),  # norms are where `linear` differs (averaged, not FroM)
])
def test_a_filter_changes_only_the_tensors_it_names(tiny, tmp_path, key, matched, other, where):
    filtered = merge(tmp_path, with_setting(tiny, key, [{"filter": where, "value": matched}, {"value": other}]), "f")
    everywhere = merge(tmp_path, with_setting(tiny, key, matched), "in")
    nowhere = merge(tmp_path, with_setting(tiny, key, other), "out")
    names = [n for n in filtered if where in n]
    assert names and len(names) < len(filtered)
    assert any(not torch.equal(everywhere[n], nowhere[n]) for n in names)  # the filter has something to do
    for name, tensor in filtered.items():
        assert torch.equal(tensor, (everywhere if where in name else nowhere)[name]), name


def test_readme_example_filter(tiny, tmp_path):
    """The README's `k: [{filter: mlp, value: 4}, {value: 1}]`, which used to be refused."""
    merged = merge(tmp_path, from_recipe(tiny, k=[{"filter": "mlp", "value": 4}, {"value": 1}]))
    k4, k1 = merge(tmp_path, from_recipe(tiny, k=4), "k4"), merge(tmp_path, from_recipe(tiny, k=1), "k1")
    assert all(torch.equal(t, (k4 if "mlp" in n else k1)[n]) for n, t in merged.items())


def test_a_gradient_runs_across_the_layers(tiny, tmp_path):
    """`k: [0, 8]` over two layers: the first gets k = 0, the last k = 8, other tensors t = 0."""
    merged = merge(tmp_path, from_recipe(tiny, k=[0, 8]))
    k0, k8 = merge(tmp_path, from_recipe(tiny, k=0), "k0"), merge(tmp_path, from_recipe(tiny, k=8), "k8")
    for name, tensor in merged.items():
        assert torch.equal(tensor, (k8 if "layers.1." in name else k0)[name]), name
    assert not torch.equal(k0["model.layers.1.mlp.up_proj.weight"], k8["model.layers.1.mlp.up_proj.weight"])


# Built-in methods: `mergekit-from yaml` must give exactly what `mergekit-yaml` gives.

def _linear(t):
    return {"merge_method": "linear", "models": [
        {"model": str(t["a"]), "parameters": {"weight": [{"filter": "mlp", "value": [0.2, 0.9]}, {"value": 1.0}]}},
        {"model": str(t["b"]), "parameters": {"weight": [0.5, 1.5]}},
    ], "parameters": {"normalize": True}}


def _task_arithmetic(t):
    return {"merge_method": "task_arithmetic", "base_model": str(t["base"]), "models": [
        {"model": str(t["a"]), "parameters": {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 1.0}]}},
        {"model": str(t["b"]), "parameters": {"weight": [1.0, 0.2]}},
    ], "parameters": {"lambda": [{"filter": "mlp", "value": [0.5, 1.5]}, {"value": 1.0}]}, "dtype": "float32"}


def _ties(t):
    return {"merge_method": "ties", "base_model": str(t["base"]), "models": [
        {"model": str(t["a"]), "parameters": {"weight": [0.2, 0.8],
                                              "density": [{"filter": "mlp", "value": 0.5}, {"value": 0.9}]}},
        {"model": str(t["b"]), "parameters": {"weight": 0.5, "density": 0.7}},
        # mergekit ignores unknown keys and shared ones on a model (whatever their value): so do we
        {"model": str(t["c"]), "parameters": {"weight": 1.0, "density": [0.3, 1.0], "normalize": "maybe"}},
    ], "parameters": {"normalize": True, "not_a_ties_key": 3}}


def _slices(t):
    return {"merge_method": "task_arithmetic", "base_model": str(t["base"]), "slices": [
        {"sources": [{"model": str(t["base"]), "layer_range": [0, 1]},
                     {"model": str(t["a"]), "layer_range": [0, 1], "parameters": {"weight": 0.7}}]},
        {"sources": [{"model": str(t["base"]), "layer_range": [1, 2]},
                     {"model": str(t["b"]), "layer_range": [1, 2],
                      "parameters": {"weight": [{"filter": "mlp", "value": 0.4}, {"value": 1.2}]}}],
         "parameters": {"lambda": 0.8}},
    ], "dtype": "bfloat16"}


@pytest.mark.parametrize("build", [_linear, _task_arithmetic, _ties, _slices], ids=lambda b: b.__name__[1:])
def test_builtin_recipes_match_mergekit_yaml(tiny, tmp_path, build):
    cfg = write_recipe(tmp_path / "recipe.yml", build(tiny))
    ours, theirs = tmp_path / "from" / "merged", tmp_path / "mergekit" / "merged"  # one name: one card title
    args = ["--no-copy-tokenizer", "--quiet"]
    result = run_cli("yaml", cfg, ours, *args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(mergekit_yaml, [str(cfg), str(theirs), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in theirs.iterdir())
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert sorted(p.name for p in ours.iterdir() if p.name != MARKER) == files  # ours also marks its output
    for name in files:  # weights, config.json, mergekit_config.yml and the card, byte for byte
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    base = load_model(tiny["base"])
    assert any(not torch.equal(t, base[n]) for n, t in load_model(ours).items())


# `methods`: every setting of the pre-pass methods, generated from their settings models.

SETTINGS = {"fw_hard": HardSettings, "fw_soft": SoftSettings, "regmean": RegMeanSettings}


def test_every_setting_has_a_description():
    for model in SETTINGS.values():
        assert all(f.description for f in model.model_fields.values()), model.__name__


def test_methods_json_lists_every_setting_and_hides_side_files():
    result = run_cli("methods", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    for method, model in SETTINGS.items():
        listed = {s["name"]: s for s in rows[method]["settings"]}
        assert set(listed) == set(model.model_fields), method
        for name, field in model.model_fields.items():
            assert listed[name]["required"] == field.is_required(), (method, name)
            if not field.is_required():
                assert listed[name]["default"] == field.get_default(call_default_factory=True), (method, name)
            assert listed[name]["description"] == field.description
        assert rows[method]["parameters"] == []  # plan / grams: set by the pre-pass, not by a recipe
    assert listed["calibration"]["per_model"] is True  # regmean also takes it in models[].parameters
    assert {p["name"] for p in rows["from"]["parameters"]} == {"k", "lambda", "weight", "scope"}
    assert rows["from"]["settings"] == []
    assert {s["name"]: s["default"] for s in rows["fw_soft"]["settings"]}["init"] == "base"  # its own default


def test_methods_text_lists_every_setting_with_its_default():
    result = run_cli("methods")
    assert result.exit_code == 0
    blocks = {b.split()[0]: b for b in _blocks(result.output)}
    for method, model in SETTINGS.items():
        lines = blocks[method].splitlines()
        for name, field in model.model_fields.items():
            line = next(ln for ln in lines if ln.split() and ln.split()[0] == name)
            default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
            assert default in line and field.description in line, line
        assert not any(ln.split() and ln.split()[0] in ("plan", "grams") for ln in lines), blocks[method]


def _blocks(text: str) -> list[str]:
    """The listing split per method (a method's line starts at column 0)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            blocks.append(line)
        else:
            blocks[-1] += "\n" + line
    return blocks
