"""Scores rank a described task's experts above unrelated models, explain themselves and are stored."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db import Score, Target
from mergekit_from.calibration import read_jsonl, sample_texts
from mergekit_from.errors import CalibrationError
from zoo.errors import ZooConfigError
from zoo.scoring import score_target

from tests.fixtures.hub_repos import ADAPTER, BASE, GATED, OTHER_DEPTH, OTHER_VOCAB, QUANTIZED, SECOND_LEVEL

MATH = {"acme/tiny-llama-math", "acme/tiny-llama-algebra", SECOND_LEVEL, ADAPTER}
UNRELATED = {"acme/tiny-llama-code", "acme/tiny-llama-chat", "other/tiny-llama-french", "other/tiny-llama-poems"}


def _by_id(cands):
    return {c.repo_id: c for c in cands}


def test_math_experts_rank_above_unrelated_models(crawled):
    cands = score_target(crawled, BASE, "solve grade school math word problems and algebra equations")
    scores = _by_id(cands)
    assert min(scores[r].score for r in MATH) > max(scores[r].score for r in UNRELATED)
    for rid in (OTHER_VOCAB, OTHER_DEPTH, QUANTIZED):  # math cards, but not mergeable
        assert scores[rid].score == 0 and scores[rid].compatible is False
    assert scores[GATED].compatible is None and scores[GATED].components["access"]["value"] == "gated"
    top = scores["acme/tiny-llama-math"].components
    assert set(top) >= {"relation", "text", "popularity", "compatibility"}
    assert all("why" in v for v in top.values())


def test_another_description_changes_the_ranking(crawled):
    cands = score_target(crawled, BASE, "write python functions from docstrings")
    assert cands[0].repo_id == "acme/tiny-llama-code"


def test_calibration_data_counts_and_bad_lines_name_the_line(crawled, tmp_path):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "Translate to French: good morning", "response": "bonjour"},
        {"prompt": "Translate to French: thank you", "response": "merci"}]) + "\n")
    cands = score_target(crawled, BASE, "a useful assistant", calib=sample_texts(read_jsonl(calib)))
    assert cands[0].repo_id == "other/tiny-llama-french"
    assert "calibration" in cands[0].components["text"]["why"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 1}\n')
    with pytest.raises(CalibrationError, match=r"bad.jsonl:2: key 'prompt' is missing or not a string"):
        score_target(crawled, BASE, "x", calib=sample_texts(read_jsonl(bad)))


def test_a_target_is_named_by_its_calibration_text_not_by_the_files_bytes(crawled, tmp_path):
    """Behaviour change: the target id hashed the calibration files' bytes; it hashes their text now,
    so the same samples written with other spacing or key order are the same target."""
    sample = {"prompt": "Translate to French: good morning", "response": "bonjour"}
    compact, spaced = tmp_path / "compact.jsonl", tmp_path / "spaced.jsonl"
    compact.write_text(json.dumps(sample, separators=(",", ":")) + "\n")
    spaced.write_text("\n" + json.dumps(dict(reversed(sample.items())), indent=None) + "\n\n")
    first = score_target(crawled, BASE, "a useful assistant", calib=sample_texts(read_jsonl(compact)))
    second = score_target(crawled, BASE, "a useful assistant", calib=sample_texts(read_jsonl(spaced)))
    assert first[0].target_id == second[0].target_id
    assert first[0].target_id != score_target(crawled, BASE, "a useful assistant")[0].target_id


def test_kinship_from_local_weights(crawled, hub_dir):
    cands = _by_id(score_target(crawled, BASE, "solve grade school math word problems", weights_dir=hub_dir))
    kin = {r: c.components["kinship"]["value"] for r, c in cands.items() if "kinship" in c.components}
    assert "acme/tiny-llama-math" in kin and ADAPTER in kin  # full models and LoRA deltas alike
    assert OTHER_VOCAB not in kin and GATED not in kin  # only compatible candidates are compared
    assert all(0.0 <= v <= 1.0 for v in kin.values())
    # math-v2 was tuned from the math model, so its task vector points where the math experts' do.
    assert kin[SECOND_LEVEL] > 0.5 > max(kin[r] for r in UNRELATED)


def test_scores_are_stored_per_target_and_rescoring_replaces_them(crawled):
    n = len(score_target(crawled, BASE, "math word problems"))
    score_target(crawled, BASE, "math word problems")
    score_target(crawled, BASE, "poems")
    with crawled.session() as s:
        assert s.scalar(select(func.count()).select_from(Target)) == 2
        assert s.scalar(select(func.count()).select_from(Score)) == 2 * n


def test_scoring_an_uncrawled_base_is_a_clear_error(store):
    with pytest.raises(ZooConfigError, match="run `mergekit-from zoo crawl --base nobody/base` first"):
        score_target(store, "nobody/base", "math")
