"""The pre-pass registry, the shared settings base, and the plan/trace formats (no model needed)."""

from __future__ import annotations

import json

import pytest
import yaml
from mergekit.options import MergeOptions

from mergekit_from.errors import ConfigError
from mergekit_from.methods import ALL_METHODS
from mergekit_from.methods.fw_plan import FWPlan
from mergekit_from.prepass.registry import PREPASSES, settings_model
from mergekit_from.prepass.settings import HardSettings, PrePassSettings, RegMeanSettings, SoftSettings
from mergekit_from.prepass.trace import FWTrace
from mergekit_from.recipe import check_recipe_file


def test_registry_names_are_the_methods_specs():
    assert set(PREPASSES) <= {m.spec.name for m in ALL_METHODS}
    assert settings_model("fw_hard") is HardSettings and settings_model("fw_soft") is SoftSettings
    assert settings_model("regmean") is RegMeanSettings and settings_model("from") is None


def test_fw_and_regmean_share_one_settings_base():
    """The six common settings are one definition (once two copies with their own descriptions)."""
    for model in (HardSettings, SoftSettings, RegMeanSettings):
        assert issubclass(model, PrePassSettings)
        for name, field in PrePassSettings.model_fields.items():
            assert model.model_fields[name].description == field.description
            assert model.model_fields[name].default == field.default


def test_base_model_is_checked_once_before_the_prepass_reads_its_settings(tmp_path):
    """One check for every method: a pre-pass recipe without a base fails on that, not on its settings."""
    recipe = {"merge_method": "fw_hard", "models": [{"model": str(tmp_path / "a")}],
              "fw_hard": {"targets": ["missing.jsonl"], "max_iters": 0}}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="'fw_hard' needs a base_model"):
        check_recipe_file(tmp_path / "r.yml", MergeOptions())


def test_plan_json_is_read_and_written_unchanged():
    text = json.dumps({"format": 1, "method": "fw_soft", "initial": "/m/init", "tensors": ["w", "v"], "density": None,
                       "steps": [[{"coef": {"w": 0.1, "v": 0.2}, "vertex": "/m/a"},
                                  {"coef": {"w": 0.3, "v": 0.0}, "vertex": {"w": "/m/a", "v": "/m/b"}}]]})
    plan = FWPlan.from_dict(json.loads(text))
    assert plan.to_json() == text and plan.references() == {"/m/init", "/m/a", "/m/b"}


def test_trace_json_is_read_and_written_unchanged(tmp_path):
    hard = {"iter": 0, "objective": 1.5, "step": 0.03, "pick_share": {"/m/a": 1.0}, "picked": "/m/a",
            "seconds": 0.1, "cpu_seconds": 0.2}
    pick = {"pick_share": {"/m/a": 0.5, "/m/b": 0.5}, "picked_by_tensor": {"w": "/m/a", "v": "/m/b"}}
    soft = {"iter": 1, "objective": 1.2, "picks_per_target": {"rev": pick}, "pick_share": {"/m/a": 0.5, "/m/b": 0.5},
            "inner_loss": {"first": 1.0, "last": 0.5, "min": 0.5, "every_10": [1.0]}, "mean_coefficient": [0.3],
            "seconds": 0.1, "cpu_seconds": 0.2}
    data = {"method": "fw_soft", "settings": {"objective": "cross_entropy"}, "pool": ["/m/a", "/m/b"],
            "targets": ["rev"], "iterations": [hard, soft], "final_objective": 1.0, "coefficients": {"/m/a": 0.4}}
    (tmp_path / "fw_trace.json").write_text(json.dumps(data, indent=1))
    trace = FWTrace.read(tmp_path / "fw_trace.json")
    assert trace.iterations[1].picks_per_target["rev"].picked_by_tensor == {"w": "/m/a", "v": "/m/b"}
    assert trace.to_json() == json.dumps(data, indent=1)
