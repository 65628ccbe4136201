"""Bad input: one clear line naming the culprit, non-zero exit, no output that looks complete."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures.models import make_finetune, make_llama, run_cli, write_recipe


def run_bad(tmp_path, recipe: dict):
    cfg = write_recipe(tmp_path / "bad.yml", recipe)
    out = tmp_path / "out"
    result = run_cli("yaml", cfg, out, "--no-copy-tokenizer", "--quiet")
    assert result.exit_code != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    return lines[0]


def from_recipe(base, *models, **params):
    return {"merge_method": "from", "base_model": str(base), "models": [{"model": str(m)} for m in models],
            "parameters": params}


def test_missing_base_model(tiny, tmp_path):
    line = run_bad(tmp_path, {"merge_method": "from", "models": [{"model": str(tiny["a"])}, {"model": str(tiny["b"])}]})
    assert "'from' needs a base_model" in line


@pytest.mark.parametrize("k, why", [(-1, "greater than or equal to 0"), ("abc", "valid number")])
def test_bad_k(tiny, tmp_path, k, why):
    line = run_bad(tmp_path, from_recipe(tiny["base"], tiny["a"], tiny["b"], k=k))
    assert "k=" in line and why in line


def test_bad_k_per_model_gradient(tiny, tmp_path):
    r = from_recipe(tiny["base"], tiny["a"], tiny["b"])
    r["models"][0]["parameters"] = {"weight": [1.0, -0.5]}
    line = run_bad(tmp_path, r)
    assert f"models[{tiny['a']}].parameters: weight=-0.5" in line


def test_shape_mismatch_names_model_and_tensor(tiny, tmp_path):
    wide = make_llama(tmp_path / "wide", hidden=48)
    line = run_bad(tmp_path, from_recipe(tiny["base"], tiny["a"], wide))
    assert str(wide) in line and "tensor 'lm_head.weight' has shape [64, 48], the base has [64, 32]" in line


def test_nan_in_input_names_model_and_tensor(tiny, tmp_path):
    bad = make_finetune(tiny["base"], tmp_path / "nan_model", 0.01, seed=9)
    sd = load_file(str(bad / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"][3, 4] = float("nan")
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    line = run_bad(tmp_path, from_recipe(tiny["base"], tiny["a"], bad))
    assert f"model '{bad}' has NaN/Inf values in tensor 'model.layers.1.mlp.down_proj.weight'" in line


def test_missing_model_path(tiny, tmp_path):
    line = run_bad(tmp_path, from_recipe(tiny["base"], tiny["a"], tmp_path / "nowhere"))
    assert f"model path not found: {tmp_path / 'nowhere'}" in line


def test_unknown_method(tiny, tmp_path):
    line = run_bad(tmp_path, {"merge_method": "frm", "base_model": str(tiny["base"]), "models": [{"model": str(tiny["a"])}]})
    assert "unknown merge_method 'frm'" in line


def test_missing_recipe_and_invalid_yaml(tmp_path):
    result = run_cli("yaml", tmp_path / "none.yml", tmp_path / "out")
    assert result.exit_code != 0 and "recipe not found" in result.stderr
    (tmp_path / "broken.yml").write_text("merge_method: [from\n")
    result = run_cli("yaml", tmp_path / "broken.yml", tmp_path / "out")
    assert result.exit_code != 0 and "not valid YAML" in result.stderr


def test_failed_merge_keeps_previous_output(tiny, tmp_path):
    """A failure must not leave a half-written directory in place of a finished one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier merge")
    bad = make_finetune(tiny["base"], tmp_path / "inf_model", 0.01, seed=9)
    sd = load_file(str(bad / "model.safetensors"))
    sd["lm_head.weight"][0, 0] = float("inf")
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    cfg = write_recipe(tmp_path / "bad.yml", from_recipe(tiny["base"], tiny["a"], bad))
    result = run_cli("yaml", cfg, out, "--no-copy-tokenizer", "--quiet")
    assert result.exit_code != 0
    assert (out / "keep.txt").read_text() == "earlier merge"
    assert not list(out.glob("*.safetensors"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_console_script_exit_code_and_single_line(tiny, tmp_path):
    """The installed entry point, in its own process: exit status and stderr as a user sees them."""
    cfg = write_recipe(tmp_path / "bad.yml", from_recipe(tiny["base"], tiny["a"], k=-2))
    proc = subprocess.run(
        [sys.executable, "-m", "mergekit_from.cli", "yaml", str(cfg), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: parameters: k=-2")
    assert not (tmp_path / "out").exists()


def test_missing_required_per_model_parameter(tiny, tmp_path):
    r = {"merge_method": "task_arithmetic", "base_model": str(tiny["base"]),
         "models": [{"model": str(tiny["a"]), "parameters": {"weight": 1.0}}, {"model": str(tiny["b"])}]}
    line = run_bad(tmp_path, r)
    assert f"models[{tiny['b']}]: merge_method 'task_arithmetic' needs parameter 'weight'" in line


def test_one_formatter_for_error_lines():
    """first_line is the message's first line; one_line prefixes the class of a bug, not of a user error."""
    from pydantic import BaseModel, ValidationError

    from mergekit_from.errors import ConfigError, first_line, one_line

    assert first_line(OSError()) == "OSError" and first_line(OSError("\n  no such file\nmore")) == "no such file"
    assert one_line(OSError("no such file\nmore")) == "OSError: no such file"
    assert one_line(ConfigError("bad k\nmore")) == "bad k"

    class M(BaseModel):
        k: int

    try:
        M(k="x")
    except ValidationError as exc:
        assert one_line(exc) == first_line(exc) == ("k: Input should be a valid integer, unable to parse string "
                                                     "as an integer (got 'x')")
