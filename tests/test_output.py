"""Output folders (issue 11 items 1 and 5): earlier outputs are replaced, --overwrite keeps the
user's files, a killed run's staging folder is cleaned up, and every recorded recipe re-runs from
any directory with the same weights. Refusals are in tests/bad_input_cases/output.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mergekit_from.output import MARKER, Output, written_by

from tests.fixtures.fw_experts import experts, fw_recipe
from tests.fixtures.models import load_model, run_cli, write_recipe

QUIET = ["--no-copy-tokenizer", "--quiet"]


def from_recipe(tiny, k: float) -> dict:
    return {"merge_method": "from", "base_model": str(tiny["base"]),
            "models": [{"model": str(tiny["a"])}, {"model": str(tiny["b"])}], "parameters": {"k": k}}


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_model(a), load_model(b)
    return first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)


def test_an_earlier_output_is_replaced_and_loads_with_its_marker(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    for k in (0.0, 4.0):
        cfg = write_recipe(tmp_path / f"k{k}.yml", from_recipe(tiny, k))
        result = run_cli("yaml", cfg, out, *QUIET)
        assert result.exit_code == 0, result.stderr
    marker = json.loads((out / MARKER).read_text())
    assert marker["command"] == "yaml" and set(marker["entries"]) == {p.name for p in out.iterdir()} - {MARKER}
    assert "k: 4.0" in (out / "mergekit_config.yml").read_text()  # the second run's output, whole
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    AutoModelForCausalLM.from_pretrained(out)  # the marker does not get in the way


def test_overwrite_writes_into_the_users_folder_and_keeps_the_rest(tiny, tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me\n")
    (out / "sub" / "data.bin").write_bytes(b"x" * 10)
    (out / "model.safetensors").write_text("an old file of the same name\n")
    cfg = write_recipe(tmp_path / "r.yml", from_recipe(tiny, 2.0))
    refused = run_cli("yaml", cfg, out, *QUIET)
    assert refused.exit_code == 2 and "pass --overwrite" in refused.stderr
    result = run_cli("yaml", cfg, out, "--overwrite", *QUIET)
    assert result.exit_code == 0, result.stderr
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / "sub" / "data.bin").read_bytes() == b"x" * 10
    assert load_model(out)  # the same-named file was replaced by the merge's
    # still the user's folder: the next run needs --overwrite again
    assert run_cli("yaml", cfg, out, *QUIET).exit_code == 2


def test_lora_output_is_marked_and_replaced(tiny, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from tests.fixtures.models import make_adapter

    a, b = (make_adapter(tiny["base"], tmp_path / f"lora_{i}", seed=i) for i in (1, 2))
    out = tmp_path / "merged"
    for rank in (2, 3):
        result = run_cli("lora", out, a, b, "--rank", rank)
        assert result.exit_code == 0, result.stderr
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3
    assert json.loads((out / MARKER).read_text())["command"] == "lora"
    PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), out)


def test_builders_own_their_folder_but_not_the_users_files(tmp_path):
    folder = tmp_path / "zoo"
    Output.check(folder, "taskzoo build").claim(["data", "models"])
    (folder / "data").mkdir()
    (folder / ".data.partial-1-x").mkdir()  # a killed run's staging folder is not the user's
    assert Output.check(folder, "taskzoo build").mode == "replace"
    assert not written_by(folder, "yaml")  # a zoo is not a merge output to replace
    (folder / "notes.txt").write_text("mine")
    assert not written_by(folder, "taskzoo build")


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    """kill -9 in the middle of an FW merge leaves its staging folder; the next run on OUT removes it."""
    slow = write_recipe(tmp_path / "slow.yml",
                        fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=10_000))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mergekit_from.cli", "yaml", str(slow), str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        deadline = time.monotonic() + 240
        while not _partials(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert _partials(tmp_path), "the run never staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _partials(tmp_path) and not out.exists()
    quick = write_recipe(tmp_path / "quick.yml", fw_recipe("fw_hard", ["reverse", "maxchar"], ["reverse"], max_iters=1))
    result = run_cli("yaml", quick, out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert not _partials(tmp_path) and (out / "model.safetensors").is_file()


# -- item 5: one path rule, and recorded recipes that re-run ----------------------------------


def _link(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return path


def _fw_project(tmp_path: Path, run_dir: Path) -> dict:
    """fw_hard with every kind of relative path: models against the working directory (as
    mergekit does), calibration, init model and tokenizer against the recipe's folder."""
    z = experts()
    _link(run_dir / "models", z["root"])
    shutil.copy(z["data_reverse"], tmp_path / "recipes" / "data" / "reverse.jsonl")
    _link(tmp_path / "recipes" / "init", z["expert_shift"])
    _link(tmp_path / "recipes" / "tok", z["base"])
    return {"merge_method": "fw_hard", "base_model": "models/base",
            "models": [{"model": "models/expert_reverse"}, {"model": "models/expert_maxchar"}], "dtype": "float32",
            "fw_hard": {"targets": ["data/reverse.jsonl"], "max_iters": 2, "init": "init", "tokenizer": "tok",
                        "samples_per_task": 8}}


def _regmean_project(tmp_path: Path, run_dir: Path) -> dict:
    """regmean with one calibration file next to the recipe and one in the working directory."""
    z = experts()
    _link(run_dir / "models", z["root"])
    shutil.copy(z["data_reverse"], tmp_path / "recipes" / "data" / "reverse.jsonl")
    shutil.copy(z["data_maxchar"], run_dir / "maxchar.jsonl")
    return {"merge_method": "regmean", "base_model": "models/base",
            "models": [{"model": "models/expert_reverse", "parameters": {"calibration": "data/reverse.jsonl"}},
                       {"model": "models/expert_maxchar"}],
            "dtype": "float32",
            "regmean": {"calibration": {"models/expert_maxchar": "maxchar.jsonl"}, "samples_per_task": 8}}


@pytest.mark.parametrize("project", [_fw_project, _regmean_project], ids=["fw_hard", "regmean"])
def test_recorded_recipe_reruns_from_anywhere_with_the_same_weights(tmp_path, monkeypatch, project):
    first, third = tmp_path / "first", tmp_path / "third"
    (tmp_path / "recipes" / "data").mkdir(parents=True)
    third.mkdir()
    cfg = write_recipe(tmp_path / "recipes" / "recipe.yml", project(tmp_path, first))
    monkeypatch.chdir(first)
    result = run_cli("yaml", cfg, "../out", "--quiet")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out"
    recorded = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert Path(recorded["base_model"]).is_absolute()
    assert sorted(p.name for p in (out / "calibration").iterdir()) == sorted(
        ["reverse.jsonl"] if recorded["merge_method"] == "fw_hard"
        else ["expert_reverse.jsonl", "expert_maxchar.jsonl"])

    monkeypatch.chdir(third)  # a third directory: nothing relative to the first run is reachable
    (first / "models").unlink()
    again = run_cli("yaml", out / "mergekit_config.yml", "again", "--quiet")
    assert again.exit_code == 0, again.stderr
    assert same_weights(out, third / "again")
