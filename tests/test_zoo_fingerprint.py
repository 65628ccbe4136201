"""Compatibility from tensor fingerprints: same-shape fine-tunes in; other vocab/sizes, quantized out."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db import TensorFingerprint
from zoo.arrays import read_header
from zoo.fingerprint import Fingerprint, compare

from tests.fixtures.hub_repos import ADAPTER, BASE, FINETUNES, OTHER_DEPTH, OTHER_VOCAB, QUANTIZED, SECOND_LEVEL


@pytest.fixture
def fps(crawled):
    with crawled.session() as s:
        return {f.repo_id: Fingerprint.from_row(f.kind, f.tensors) for f in s.scalars(select(TensorFingerprint))}


def test_same_shape_finetunes_and_adapters_are_compatible(fps):
    base = fps[BASE]
    for rid in [*FINETUNES, SECOND_LEVEL]:
        verdict = compare(base, fps[rid])
        assert verdict.compatible is True, (rid, verdict.reason)
        assert fps[rid].shape_hash == base.shape_hash
    verdict = compare(base, fps[ADAPTER])
    assert verdict.compatible is True and "LoRA tensors fit" in verdict.reason


def test_other_vocabulary_is_flagged_and_other_depth_rejected(fps):
    base = fps[BASE]
    vocab = compare(base, fps[OTHER_VOCAB])
    assert vocab.compatible is False and vocab.vocab_mismatch and "80 rows vs the base's 64" in vocab.reason
    depth = compare(base, fps[OTHER_DEPTH])
    assert depth.compatible is False and not depth.vocab_mismatch and "model.layers.2" in depth.reason


def test_quantized_excluded_unless_asked(fps):
    assert compare(fps[BASE], fps[QUANTIZED], quantized=True).compatible is False
    assert compare(fps[BASE], fps[QUANTIZED], quantized=True, allow_quantized=True).compatible is True


def test_unknown_without_fingerprint_and_adapter_on_wrong_base(fps):
    assert compare(fps[BASE], None).compatible is None
    # The LoRA's q_proj is 16x16; a base whose q_proj is another size must refuse it.
    wider = Fingerprint.of([(n, d, (s[0] * 2, *s[1:]) if "q_proj" in n else s) for n, d, s in fps[BASE].tensors])
    verdict = compare(wider, fps[ADAPTER])
    assert verdict.compatible is False and "does not fit" in verdict.reason


def test_fingerprint_from_the_hub_equals_the_local_header(fps, hub_dir):
    header = read_header(hub_dir / BASE / "model.safetensors")
    local = Fingerprint.of((n, v["dtype"], v["shape"]) for n, v in header.items() if n != "__metadata__")
    assert local == fps[BASE] and local.vocab_size == 64
