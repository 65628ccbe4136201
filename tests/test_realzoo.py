"""The real zoo on a tiny slice: GGUF conversion, task generators, the build's cache (never the 93 MB wheel)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
import torch

from mergekit_from.errors import ConfigError
from mergekit_from.realzoo import tasks as rt
from mergekit_from.realzoo.build import FULL, build_realzoo, sliced, summary, tau_ratio
from mergekit_from.realzoo.convert import convert_gguf, load_gguf
from mergekit_from.taskzoo.training import TrainSchedule
from tests.fixtures.tiny_gguf import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_gguf_conversion_keeps_logits_tokenizer_and_template(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded, tok = load_gguf(tiny_gguf)
    out = convert_gguf(tiny_gguf, tmp_path / "base")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_key_value_heads"], config["tie_word_embeddings"]) == (2, True)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(str(out))
    prompt = rt.chat_prompt(tok2, "Add 12 and 30.")
    assert prompt.endswith("<|im_start|>assistant\n") and tok2.chat_template == tok.chat_template
    ids = tok2(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok(prompt)["input_ids"]
    with torch.no_grad():
        a, b = loaded(ids).logits, model(ids).logits
    assert a.abs().max() > 0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert "dequantized" in (out / "README.md").read_text()


def _key(task: str, question: str) -> str:
    """What a question is about, for the split check: the item of a category question, else the question."""
    return re.search(r"'([^']+)'", question).group(1) if task == "category" else question


@pytest.mark.parametrize("task", list(rt.TASKS))
def test_task_generator_is_deterministic_and_splits_are_disjoint(task):
    splits = {s: rt.examples(task, s, 50) for s in rt.SPLITS}
    assert splits["test"] == rt.examples(task, "test", 50)  # same seed, same examples
    assert rt.examples(task, "test", 50, seed=1) != splits["test"]
    keys = {s: {_key(task, q) for q, _ in pairs} for s, pairs in splits.items()}
    assert all(len(pairs) == 50 and len({q for q, _ in pairs}) == 50 for pairs in splits.values())
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["calibration"]
    assert not keys["calibration"] & keys["test"]
    assert all(a and len(a) <= 24 for pairs in splits.values() for _, a in pairs)  # short answers: a few tokens


def test_task_answers():
    rt_tasks = rt.TASKS
    r = None
    assert rt_tasks["time12"].render((0, 5), r) == ("Convert 00:05 to 12-hour time.", "12:05 AM")
    assert rt_tasks["time12"].render((12, 30), r)[1] == "12:30 PM"
    assert rt_tasks["time12"].render((23, 59), r)[1] == "11:59 PM"
    assert rt_tasks["iso_date"].render((2019, 3, 5), r) == ("Write March 5, 2019 as an ISO date.", "2019-03-05")
    assert rt_tasks["us_date"].render((2019, 3, 5), r)[1] == "03/05/2019"
    assert rt_tasks["units"].render((4, 3), r) == ("How many minutes are in 3 hours?", "180")
    assert rt_tasks["initials"].render(("Grace", "Hopper"), r)[1] == "G.H."
    assert len(rt.TASKS) >= 12 and len(rt.TARGET_TASKS) == 8
    for q, a in rt.examples("category", "test", 30):
        item = _key("category", q)
        assert item in rt.CATEGORIES[a].split() and a in q
    split = {key: rt.TASKS["category"].split(key) for key in rt.ITEMS}
    for cat in rt.CATEGORIES:  # each category in each split: short word lists are split per category
        assert {s for (_, c), s in split.items() if c == cat} == set(rt.SPLITS)


def test_override_must_name_an_expert():
    with pytest.raises(ConfigError, match="'fft-subtrac' names no expert"):
        dataclasses.replace(FULL, overrides=(("fft-subtrac", TrainSchedule(4, 1e-3, 2)),))
    with pytest.raises(ConfigError, match="'lora-subtract'"):  # subtract is no target: it has no adapter
        dataclasses.replace(FULL, overrides=(("lora-subtract", TrainSchedule(4, 1e-3, 2)),))
    assert [name for name, _ in sliced(FULL, ["units", "add"]).overrides] == ["lora-units"]  # a slice keeps its own


def test_tau_ratio():
    base = {"w": torch.tensor([3.0, 4.0])}
    assert tau_ratio(base, [torch.zeros(2)]) == 0
    assert tau_ratio(base, [torch.tensor([0.3, 0.4]), torch.tensor([0.0])]) == pytest.approx(0.1)


TINY = dataclasses.replace(sliced(FULL, ["add", "subtract"]), fft=TrainSchedule(2, 1e-3, 2), lora=TrainSchedule(2, 1e-3, 2),
                           eval_n=3, probe_n=2, probe_every=5, n_calibration=3, n_train=6, overrides=())


@pytest.mark.slow
def test_build_writes_zoo_and_its_cache_skips_finished_experts(tiny_gguf, tmp_path, monkeypatch):
    from mergekit_from.realzoo import build as realzoo_build
    from mergekit_from.realzoo import load_realzoo

    trained: list[str] = []
    real_train = realzoo_build.train

    def counting(model, data, tokenizer, schedule, *, desc, **kw):
        trained.append(desc)
        return real_train(model, data, tokenizer, schedule, desc=desc, **kw)

    monkeypatch.setattr(realzoo_build, "train", counting)
    zoo = build_realzoo(tmp_path / "zoo", spec=TINY, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["fft add", "fft subtract", "lora add"]  # subtract is no target: FFT only
    assert sorted(zoo.manifest["models"]) == ["base", "fft-add", "fft-subtract", "lora-add"]
    assert load_realzoo(zoo.root).manifest == zoo.manifest
    lines = zoo.calibration("add").read_text().splitlines()
    sample = json.loads(lines[0])
    assert len(lines) == 3 and sample["prompt"].startswith("<|im_start|>user\nAdd ")
    assert sample["prompt"].endswith("<|im_start|>assistant\n") and sample["response"].isdigit()
    assert (zoo.expert("add", "lora") / "adapter_config.json").is_file()
    assert json.loads((zoo.expert("add", "lora") / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "realzoo/base"
    for name in ("fft-add", "lora-add"):
        assert 0 < zoo.manifest["models"][name]["tau_ratio"] < 1
    assert zoo.accuracy("base").keys() == {"add", "subtract"}
    table = summary(zoo)
    assert [line.split()[0] for line in table] == ["model", "fft-add", "fft-subtract", "lora-add"]
    assert table[3].split()[-1] == f"{zoo.manifest['models']['lora-add']['tau_ratio']:.5f}"
    from mergekit_from.taskzoo.evaluate import load_model

    merged, tok = load_model(zoo.expert("add", "lora"))  # the adapter's base found by its repo id in the zoo
    assert tok.chat_template and merged.config.num_key_value_heads == 2
    # `eval` asks real-zoo questions through the chat template, as the build measured them
    from click.testing import CliRunner

    from mergekit_from.cli import main

    result = CliRunner().invoke(main, ["eval", str(zoo.expert("add")), "--tasks", "add", "--n", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == {"add": zoo.accuracy("fft-add")["add"]}
    result = CliRunner().invoke(main, ["eval", str(zoo.expert("add")), "--tasks", "add,nope"])
    assert result.exit_code == 2 and "unknown task 'nope'" in result.output and "real zoo: add" in result.output

    # interrupted after the FFT experts: the rebuild trains only what is missing
    (zoo.root / "manifest.json").unlink()
    stamp = (zoo.expert("add") / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(zoo.expert("add", "lora"))
    trained.clear()
    build_realzoo(tmp_path / "zoo", spec=TINY, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["lora add"]
    assert (zoo.expert("add") / "model.safetensors").stat().st_mtime_ns == stamp

    # a complete zoo is reused whole; a changed FFT plan retrains the FFT experts only
    build_realzoo(tmp_path / "zoo", spec=TINY, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["lora add"]
    trained.clear()
    wider = dataclasses.replace(TINY, tasks=("add", "subtract", "upper"))  # a slice first, then more tasks
    zoo = build_realzoo(tmp_path / "zoo", spec=wider, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["fft upper"] and zoo.accuracy("base").keys() == {"add", "subtract", "upper"}
    trained.clear()
    changed = dataclasses.replace(TINY, fft=TrainSchedule(3, 1e-3, 2))
    build_realzoo(tmp_path / "zoo", spec=changed, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["fft add", "fft subtract"]
    trained.clear()  # a per-expert override retrains that expert only
    longer = dataclasses.replace(changed, overrides=(("fft-subtract", TrainSchedule(4, 1e-3, 2)),))
    zoo = build_realzoo(tmp_path / "zoo", spec=longer, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["fft subtract"] and zoo.manifest["models"]["fft-subtract"]["train"]["steps"] == 4
    assert longer.schedule("lora-add") == longer.lora and longer.schedule("fft-add") == longer.fft

    # a task's data changed (its question reworded, same spec): its expert retrains and the base rescores it
    trained.clear()
    before = zoo.manifest["data"]
    reworded = dataclasses.replace(rt.TASKS["subtract"], render=lambda k, r: (f"{k[0]} minus {k[1]}?", str(k[0] - k[1])))
    monkeypatch.setitem(rt.TASKS, "subtract", reworded)
    zoo = build_realzoo(tmp_path / "zoo", spec=longer, gguf=tiny_gguf, threads=1, device="cpu")
    assert trained == ["fft subtract"]
    assert zoo.manifest["data"]["subtract"] != before["subtract"] and zoo.manifest["data"]["add"] == before["add"]
    assert zoo.manifest["models"]["base"]["data"].items() >= zoo.manifest["data"].items()  # upper: scored earlier
    assert json.loads(zoo.calibration("subtract").read_text().splitlines()[0])["prompt"].count(" minus ") == 1
