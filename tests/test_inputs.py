"""What the early input checks still let through: vocabularies a recipe aligns, pickles the user
allows, and Ctrl-C mid-merge (exit 130, one line, nothing left behind). The refusals themselves
are cases of the bad-input matrix (``bad_input_cases/inputs.py`` and ``lora.py``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mergekit_from.taskzoo.tokenizer import WIDE_CHARS, CharVocab

from tests.bad_input_cases.inputs import pickled_copy, wider_vocab
from tests.fixtures.models import load_model, make_finetune, make_llama, merge, run_cli, write_recipe


def test_vocab_mismatch_merges_when_the_recipe_aligns_tokenizers(tmp_path):
    vocab, wide_vocab = CharVocab(), CharVocab(WIDE_CHARS)
    base = make_llama(tmp_path / "base", vocab=vocab.size)
    a = make_finetune(base, tmp_path / "a", 0.01, seed=1)
    wide = wider_vocab(make_finetune(base, tmp_path / "b", 0.01, seed=2), tmp_path / "wide",
                       wide_vocab.size - vocab.size)
    for folder, v in ((base, vocab), (a, vocab), (wide, wide_vocab)):
        v.save(folder)
    recipe = {"merge_method": "from", "base_model": str(base), "models": [{"model": str(a)}, {"model": str(wide)}]}
    cfg = write_recipe(tmp_path / "plain.yml", recipe)
    refused = run_cli("yaml", cfg, tmp_path / "plain", "--quiet")
    assert refused.exit_code == 2 and "tokenizer_source" in refused.stderr and str(wide) in refused.stderr
    merged = merge(tmp_path, {**recipe, "tokenizer_source": "base"}, name="aligned")
    assert merged["lm_head.weight"].shape[0] == vocab.size


def test_allow_pickle_merges_pickled_weights_as_safetensors(tiny, tmp_path):
    pickled = pickled_copy(tiny["b"], tmp_path / "pickled")
    recipe = {"merge_method": "from", "base_model": str(tiny["base"]), "parameters": {"k": 2.0}}
    expected = merge(tmp_path, {**recipe, "models": [{"model": str(tiny["a"])}, {"model": str(tiny["b"])}]}, "st")
    cfg = write_recipe(tmp_path / "pk.yml", {**recipe, "models": [{"model": str(tiny["a"])}, {"model": str(pickled)}]})
    result = run_cli("yaml", cfg, tmp_path / "pk", "--no-copy-tokenizer", "--quiet", "--allow-pickle")
    assert result.exit_code == 0, result.output
    got = load_model(tmp_path / "pk")
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in expected)


def test_eval_allow_pickle_scores_pickled_weights_as_safetensors(tiny, tmp_path):
    pickled = pickled_copy(tiny["a"], tmp_path / "pickled")
    CharVocab().save(tmp_path / "tok")
    args = ["--tasks", "reverse", "--n", "4", "--tokenizer", tmp_path / "tok", "--json"]
    expected = run_cli("eval", tiny["a"], *args)
    result = run_cli("eval", pickled, *args, "--allow-pickle")
    assert expected.exit_code == 0 and result.exit_code == 0, result.output
    assert result.stdout.replace(str(pickled), str(tiny["a"])) == expected.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigint_mid_merge_exits_130_with_one_line(tmp_path):
    """Ctrl-C once the merge is writing its staged output: exit 130, one line, no traceback, no output."""
    base = make_llama(tmp_path / "base", layers=48)  # enough tensors to take seconds to merge
    models = [make_finetune(base, tmp_path / name, 0.01, seed=i) for i, name in enumerate("ab")]
    cfg = write_recipe(tmp_path / "r.yml", {"merge_method": "from", "base_model": str(base),
                                            "models": [{"model": str(m)} for m in models]})
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "mergekit-from"
    # A shell's background job (`pytest ... &`) ignores SIGINT, and children inherit that: a terminal's
    # Ctrl-C reaches the command with the default disposition, so the child starts with it.
    proc = subprocess.Popen([str(script), "yaml", str(cfg), str(out), "--no-copy-tokenizer", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".*partial*")):  # the staged output exists: the merge is running
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["error: interrupted"], stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
