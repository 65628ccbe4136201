"""Bad input to fw_hard / fw_soft / regmean recipes and to the calibration reader: one line, named culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_from import calibration
from mergekit_from.cli import main
from mergekit_from.errors import CalibrationError

from tests.fixtures.fw_experts import VOCAB, experts, fw_recipe, make_base
from tests.fixtures.models import write_recipe


def run_bad(tmp_path: Path, recipe: dict) -> str:
    """Run a recipe that must fail; returns the error line and checks nothing was written."""
    cfg = write_recipe(tmp_path / "bad.yml", recipe)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert not out.exists() and not list(tmp_path.glob(".out.*")) and not list(tmp_path.glob(".prepass-*"))
    return lines[0]


# -- calibration reader ------------------------------------------------------------------------


def test_reader_accepts_both_formats_and_masks_the_prompt(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompt": "r:ab>", "response": "ba"}\n\n{"text": "abc"}\n')
    samples = calibration.read_jsonl(f)
    assert samples == [calibration.Sample("r:ab>", "ba"), calibration.Sample("abc")]
    tok = VOCAB.hf_tokenizer()
    pair, text = calibration.encode(samples, tok)
    assert pair.labels == [-100] * 6 + tok("ba", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert text.labels == text.input_ids and text.prompt_len == len(text.input_ids)
    assert len(calibration.read_jsonl(f, limit=1)) == 1


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "respo', ":2: malformed JSON"),
        ('{"prompt": "a"}\n', ":1: key 'response' is missing"),
        ('{"question": "a"}\n', ":1: expected keys 'prompt' and 'response'"),
        ('["a", "b"]\n', ":1: expected a JSON object"),
        ("\n\n", ": no samples"),
    ],
)
def test_reader_names_file_and_line(tmp_path, content, expected):
    f = tmp_path / "task.jsonl"
    f.write_text(content)
    with pytest.raises(CalibrationError, match=f"{f}{expected}"):
        calibration.read_jsonl(f)


# -- recipes -----------------------------------------------------------------------------------


def test_missing_calibration_file(tmp_path):
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["fw_hard"]["targets"] = {"reverse": str(tmp_path / "nope.jsonl")}
    assert run_bad(tmp_path, recipe) == f"error: calibration file not found: {tmp_path / 'nope.jsonl'}"


def test_malformed_calibration_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "r:ab>", "response": "ba"}\n{oops}\n')
    recipe = fw_recipe("fw_soft", ["reverse"], ["reverse"])
    recipe["fw_soft"]["targets"] = [str(bad)]
    assert f"{bad}:2: malformed JSON" in run_bad(tmp_path, recipe)


def test_task_without_samples(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["fw_hard"]["targets"] = {"reverse": str(empty)}
    assert run_bad(tmp_path, recipe) == f"error: {empty}: no samples (the file has no JSON lines)"


@pytest.fixture(scope="module")
def wider(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("wide") / "wide", hidden=48)


def test_incompatible_pool_model_is_named_with_the_tensor(tmp_path, wider):
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["models"].append({"model": str(wider)})
    line = run_bad(tmp_path, recipe)
    assert f"pool model {wider} is incompatible with the base: tensor " in line
    assert "has shape" in line and "skip_incompatible" in line


def test_incompatible_pool_model_is_skipped_when_asked(tmp_path, wider, caplog):
    recipe = fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=1, samples_per_task=4,
                       skip_incompatible=True)
    recipe["models"].append({"model": str(wider)})
    cfg = write_recipe(tmp_path / "skip.yml", recipe)
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"skipping pool model {wider}" in caplog.text
    pool = json.loads((tmp_path / "out" / "fw_trace.json").read_text())["pool"]
    assert len(pool) == 2 and str(wider) not in pool


def test_empty_pool(tmp_path):
    recipe = fw_recipe("fw_hard", [], ["reverse"])
    recipe["models"] = [{"model": recipe["base_model"]}]
    assert "the pool is empty" in run_bad(tmp_path, recipe)


@pytest.mark.parametrize("method", ["fw_hard", "fw_soft"])
def test_max_iters_must_be_positive(tmp_path, method):
    recipe = fw_recipe(method, ["reverse"], ["reverse"], max_iters=0)
    line = run_bad(tmp_path, recipe)
    assert line.startswith(f"error: {method} settings: max_iters: Input should be greater than 0")


def test_settings_from_parameters_and_typos(tmp_path):
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["parameters"] = {"max_iters": -1}
    assert "max_iters: Input should be greater than 0" in run_bad(tmp_path, recipe)
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"], step_sise=0.1)
    assert "step_sise: Extra inputs are not permitted" in run_bad(tmp_path, recipe)


@pytest.mark.parametrize("method", ["fw_hard", "regmean"])
def test_base_missing_on_disk(tmp_path, method):
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["merge_method"] = method
    recipe["base_model"] = str(tmp_path / "no_base")
    if method == "regmean":
        recipe["regmean"] = {"calibration": {m["model"]: str(experts()["data_reverse"]) for m in recipe["models"]}}
        del recipe["fw_hard"]
    assert run_bad(tmp_path, recipe) == f"error: base model not found on disk: {tmp_path / 'no_base'}"


def test_regmean_model_without_calibration(tmp_path):
    z = experts()
    recipe = {
        "merge_method": "regmean",
        "base_model": str(z["base"]),
        "models": [
            {"model": str(z["expert_reverse"]), "parameters": {"calibration": str(z["data_reverse"])}},
            {"model": str(z["expert_maxchar"])},
        ],
    }
    assert f"pool model {z['expert_maxchar']} has no calibration data" in run_bad(tmp_path, recipe)


def test_base_without_tokenizer(tmp_path):
    bare = tmp_path / "bare_base"
    bare.mkdir()
    for f in ("model.safetensors", "config.json"):
        (bare / f).write_bytes((experts()["base"] / f).read_bytes())
    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    recipe["base_model"] = str(bare)
    assert run_bad(tmp_path, recipe).startswith(f"error: cannot load a tokenizer from {bare}")


def test_kernel_without_its_prepass_says_so(tmp_path):
    """Plain mergekit (no pre-pass) must not write a wrong merge silently."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe = fw_recipe("fw_hard", ["reverse"], ["reverse"])
    with pytest.raises(Exception, match="runs through `mergekit-from yaml`"):
        run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "out"), MergeOptions(quiet=True))
