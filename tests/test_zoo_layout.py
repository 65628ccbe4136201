"""One layout rule (zoo.layout) behind the merge's, the pre-pass's and the zoo's compatibility checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_from.errors import ModelInputError
from mergekit_from.prepass.pool import layout_mismatch
from mergekit_from.weights import TensorIndex
from zoo.fingerprint import Fingerprint, compare
from zoo.layout import first_mismatch

BASE = {"model.embed_tokens.weight": (64, 16), "model.layers.0.mlp.up_proj.weight": (32, 16),
        "lm_head.weight": (64, 16)}
WIDER_VOCAB = {**BASE, "model.embed_tokens.weight": (80, 16), "lm_head.weight": (80, 16)}


def _fp(shapes: dict) -> Fingerprint:
    return Fingerprint.of((n, "F32", s) for n, s in shapes.items())


def _index(shapes: dict) -> TensorIndex:
    return TensorIndex(root=Path("unread"), shapes=dict(shapes))


def test_vocabulary_policy_exact_reports_and_tolerate_ignores_a_vocabulary_difference():
    exact = first_mismatch(BASE, WIDER_VOCAB, vocab="exact")
    assert exact.kind == "vocab" and exact.name == "lm_head.weight"
    assert "80 rows vs the base's 64" in str(exact)
    assert first_mismatch(BASE, WIDER_VOCAB, vocab="tolerate") is None
    assert first_mismatch(BASE, BASE, vocab="exact") is None


def test_a_structural_difference_is_named_before_a_vocabulary_one():
    other = {**WIDER_VOCAB, "model.layers.0.mlp.up_proj.weight": (48, 16)}
    for vocab in ("exact", "tolerate"):
        m = first_mismatch(BASE, other, vocab=vocab)
        assert (m.kind, m.name) == ("shape", "model.layers.0.mlp.up_proj.weight")
    wider_hidden = {n: (s[0], 24) for n, s in BASE.items()}  # a vocabulary tensor, but not in its first axis
    assert first_mismatch(BASE, wider_hidden, vocab="tolerate").kind == "shape"


def test_the_three_call_sites_keep_their_vocabulary_policies():
    _index(BASE).check_compatible(_index(WIDER_VOCAB), label="wide")  # the merge tolerates it
    assert "vocabulary mismatch: 80 rows" in layout_mismatch(_index(BASE), _index(WIDER_VOCAB))  # the pre-pass: exact
    verdict = compare(_fp(BASE), _fp(WIDER_VOCAB))  # the zoo: rejected, flagged
    assert verdict.compatible is False and verdict.vocab_mismatch
    deeper = {**BASE, "model.layers.1.mlp.up_proj.weight": (32, 16)}
    with pytest.raises(ModelInputError, match="has tensor 'model.layers.1.mlp.up_proj.weight' that the base does"):
        _index(BASE).check_compatible(_index(deeper), label="deeper")
    assert layout_mismatch(_index(BASE), _index(deeper)) == compare(_fp(BASE), _fp(deeper)).reason


def test_a_pre_pass_model_with_a_wider_vocabulary_and_another_layer_is_named_by_the_layer():
    """Behaviour change: the pre-pass walked the base's tensors in file order and named the
    embedding first; the one rule names structural differences first, sorted by name."""
    other = {**WIDER_VOCAB, "model.layers.0.mlp.up_proj.weight": (48, 16)}
    assert "model.layers.0.mlp.up_proj.weight" in layout_mismatch(_index(BASE), _index(other))


def test_a_candidate_lacking_a_vocabulary_tensor_is_not_called_a_vocabulary_mismatch():
    """Behaviour change: the zoo compared hashes without the vocabulary tensors and called any
    difference there a vocabulary mismatch, even a missing (tied) lm_head with the same vocabulary."""
    tied = {n: s for n, s in BASE.items() if n != "lm_head.weight"}
    verdict = compare(_fp(BASE), _fp(tied))
    assert verdict.compatible is False and not verdict.vocab_mismatch
    assert verdict.reason == "lacks tensor 'lm_head.weight' that the base has"
