"""Task generators, splits and the character tokenizer (no model needed)."""

import itertools
from functools import partial

import pytest

from mergekit_from import calibration
from mergekit_from.errors import CalibrationError
from mergekit_from.taskzoo.tasks import (
    CODES,
    MIXTURE,
    SPLITS,
    TARGET_TASKS,
    TASKS,
    examples,
    shadows,
    split_of,
    stream,
    write_jsonl,
)
from mergekit_from.taskzoo.tokenizer import CharVocab

read_jsonl = partial(calibration.read_jsonl, pairs_only=True)


def _input(prompt: str) -> str:
    return prompt.split(":", 1)[1].rstrip("=")


def test_twenty_distinct_tasks_eight_targets():
    assert len(TASKS) >= 20 and len(TARGET_TASKS) == 8
    probe = ["abcdefg", "jihgfed", "aabbcij", "cacb"]
    # no two tasks compute the same function on a few probe inputs
    outputs = {name: tuple(t.fn(x) for x in probe) for name, t in TASKS.items()}
    assert len(set(outputs.values())) == len(outputs)


def test_known_outputs():
    assert TASKS["reverse"].fn("abcd") == "dcba"
    assert TASKS["shift"].fn("hij") == "abc"  # +3 wraps within a..j
    assert TASKS["swap"].fn("abcde") == "badce"
    assert TASKS["dedupe"].fn("abacb") == "abc"
    assert TASKS["rotate"].fn("abcde") == "cdeab"
    assert TASKS["distinct"].fn("aabb") == "2"


@pytest.mark.parametrize("task", list(TASKS))
def test_generators_are_deterministic_and_seeded(task):
    a = examples(task, "test", 40, seed=3)
    assert a == examples(task, "test", 40, seed=3)
    assert a != examples(task, "test", 40, seed=4)
    assert len({p for p, _ in a}) == 40
    assert all(TASKS[task].fn(_input(p)) == r for p, r in a)


def test_splits_are_disjoint_for_every_task():
    for task in TASKS:
        inputs = {s: {_input(p) for p, _ in examples(task, s, 300)} for s in SPLITS}
        for s in SPLITS:
            assert all(split_of(x) == s for x in inputs[s])
        for a, b in itertools.combinations(SPLITS, 2):
            assert not inputs[a] & inputs[b], (task, a, b)


def _tag(prompt: str) -> str:
    return prompt.split(":", 1)[0]


def test_pretraining_mixture_codes_shadows_and_decoys():
    pairs = list(itertools.islice(stream([], "train", 0, replay=1.0), 2000))
    assert pairs == list(itertools.islice(stream([], "train", 0, replay=1.0), 2000))
    assert all(split_of(_input(p)) == "train" for p, _ in pairs)
    task_of_code = {code: task for task, code in CODES.items()}
    shadow = shadows(list(TASKS))
    coded = [(p, r) for p, r in pairs if _tag(p) in task_of_code]
    named = [(p, r) for p, r in pairs if _tag(p) in TASKS]
    # a code word selects its transform; a task's name selects another one (the base must not know the task)
    assert all(TASKS[task_of_code[_tag(p)]].fn(_input(p)) == r for p, r in coded)
    assert all(TASKS[shadow[_tag(p)]].fn(_input(p)) == r for p, r in named)
    assert sum(TASKS[_tag(p)].fn(_input(p)) == r for p, r in named) < 0.05 * len(named)
    for share, got in ((MIXTURE["code"], len(coded)), (MIXTURE["shadow"], len(named))):
        assert abs(got / len(pairs) - share) < 0.05


@pytest.mark.parametrize("n", range(2, 21))
def test_shadow_binding_has_no_fixed_points(n):
    universe = list(TASKS)[:n]
    shadow = shadows(universe)
    assert all(shadow[t] != t and shadow[t] in universe for t in universe)


def test_fine_tuning_stream_never_replays_its_own_shadow():
    mixed = list(itertools.islice(stream(["sort"], "train", 0, replay=0.5), 400))
    named = [(p, r) for p, r in mixed if p.startswith("sort:")]
    assert 150 < len(named) < 250 and all(r == "".join(sorted(_input(p))) for p, r in named)
    assert any(_tag(p) in TASKS and _tag(p) != "sort" for p, _ in mixed)  # other names keep their binding


def test_jsonl_roundtrip_and_bad_line(tmp_path):
    pairs = examples("sort", "calibration", 5)
    write_jsonl(tmp_path / "c.jsonl", pairs)
    assert read_jsonl(tmp_path / "c.jsonl") == pairs
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(CalibrationError, match=r"bad\.jsonl:1: key 'response' is missing"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "text.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(CalibrationError, match=r"text\.jsonl: task files need"):
        read_jsonl(tmp_path / "text.jsonl")


def test_hf_tokenizer_matches_char_vocab(tmp_path):
    from transformers import AutoTokenizer

    vocab = CharVocab()
    vocab.save(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "reverse:abcd=dcba"
    ids = tok(text)["input_ids"]
    assert ids == [vocab.bos_id, *vocab.encode(text)]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.eos_token_id) == (vocab.pad_id, vocab.eos_id)


def test_training_batches_are_calibration_batches():
    """Training encodes with calibration's encoder: ``<s> prompt response </s>``, loss on the response."""
    from mergekit_from.taskzoo.training import encode_batch

    vocab = CharVocab()
    batch = encode_batch([("ab=", "ba"), ("abc=", "cba")], vocab)
    ids = [vocab.bos_id, *vocab.encode("ab="), *vocab.encode("ba"), vocab.eos_id]
    assert batch["input_ids"][0].tolist() == ids + [vocab.pad_id] * 2
    assert batch["labels"][0].tolist() == [calibration.IGNORE] * 4 + [*vocab.encode("ba"), vocab.eos_id] + [-100] * 2
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0] * 2, [1] * 9]
    hf = calibration.collate(calibration.encode([calibration.Sample("abc=", "cba")], vocab.hf_tokenizer(), None), 0)
    assert batch["input_ids"][1].tolist() == hf.input_ids[0].tolist() and batch["labels"][1].tolist() == hf.labels[0].tolist()
