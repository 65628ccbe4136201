"""LoRA adapters as FW-Merging pool members (``model: BASE+ADAPTER``), folded per tensor on the fly."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from mergekit.common import ModelReference
from safetensors.torch import load_file

from mergekit_from import lora
from mergekit_from.prepass.pool import ref_string

from tests.fixtures.fw_experts import adapters, experts, fw_recipe
from tests.test_fw import run_fw

SETTINGS = {
    "fw_hard": {"max_iters": 3, "lmo": "tensor", "samples_per_task": 8},
    "fw_soft": {"max_iters": 2, "ada_iters": 5, "ada_batch_size": 8, "samples_per_task": 8},
}


def pool_recipe(method: str, members: list[str]) -> dict:
    """A pool of the shift expert plus ``members`` for the targets reverse and maxchar."""
    recipe = fw_recipe(method, ["shift"], ["reverse", "maxchar"], **SETTINGS[method])
    recipe["models"] += [{"model": m} for m in members]
    return recipe


def adapted(task: str) -> str:
    return f"{experts()['base']}+{adapters()[f'lora_{task}']}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fw_hard", "fw_soft"])
def test_adapters_in_the_pool_equal_their_folded_copies(tmp_path, monkeypatch, method):
    """The same FW run on ``base+adapter`` members and on PEFT-folded full copies: same picks, same
    weights; mergekit's own LoRA merge (a whole-model PEFT merge into a cache) never runs."""
    a = adapters()
    folded, out_a = run_fw(tmp_path, pool_recipe(method, [str(a["folded_reverse"]), str(a["folded_maxchar"])]), "f")

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"mergekit merged {self} as a whole model")

    monkeypatch.setattr(ModelReference, "merged", lambda self, *a, **k: self if self.lora is None else refuse(self))
    streamed, out_s = run_fw(tmp_path, pool_recipe(method, [adapted("reverse"), adapted("maxchar")]), "s")

    names = {ref_string(adapted(t)): ref_string(str(a[f"folded_{t}"])) for t in ("reverse", "maxchar")}
    assert [names.get(r, r) for r in out_s["pool"]] == out_a["pool"]
    for it_s, it_f in zip(out_s["iterations"], out_a["iterations"]):
        assert {names.get(r, r): v for r, v in it_s["pick_share"].items()} == pytest.approx(it_f["pick_share"])
        assert it_s["objective"] == pytest.approx(it_f["objective"], abs=1e-5)
    picked = {r for it in out_s["iterations"] for r in it["pick_share"]}
    assert picked & set(names), "no adapter was picked: the comparison would not cover the fold"
    w_s, w_f = load_file(str(streamed / "model.safetensors")), load_file(str(folded / "model.safetensors"))
    assert set(w_s) == set(w_f)
    for name in w_f:
        assert torch.allclose(w_s[name], w_f[name], atol=1e-5, rtol=1e-5), name
    assert ".prepass-" not in (streamed / "README.md").read_text()


@pytest.mark.slow
def test_adapters_are_folded_one_tensor_at_a_time(tmp_path, monkeypatch):
    """Instrument the fold: at most one folded tensor alive whenever one is made, in the pre-pass and
    in mergekit's executor, and each fold reads one module's factors."""
    live: dict[int, str] = {}
    worst = {"tensors": 0, "calls": 0}
    original_fold, original_tensor = lora.lora_delta, lora.FoldedIndex.tensor

    def tracked(self, name):
        t = original_tensor(self, name)
        if name in self.modules:
            live[id(t)] = name
            weakref.finalize(t, live.pop, id(t), None)
            worst["tensors"] = max(worst["tensors"], len(live))
        return t

    def fold(a, b, scale):
        assert a.dim() == 2 and b.shape[1] == a.shape[0]  # one module's factors, not a stacked model
        worst["calls"] += 1
        return original_fold(a, b, scale)

    monkeypatch.setattr(lora.FoldedIndex, "tensor", tracked)
    monkeypatch.setattr(lora, "lora_delta", fold)
    recipe = fw_recipe("fw_hard", ["shift"], ["reverse"], max_iters=2, samples_per_task=8)
    recipe["models"] += [{"model": adapted("reverse")}, {"model": adapted("maxchar")}]
    run_fw(tmp_path, recipe)
    assert worst["tensors"] == 1
    modules = sum(len(lora.FoldedIndex.open(lora.TensorIndex.open(experts()["base"]), adapters()[f"lora_{t}"]).modules)
                  for t in ("reverse", "maxchar"))
    assert worst["calls"] > 2 * modules  # folded again at every read, never kept


@pytest.mark.slow
def test_auto_fw_pool_takes_the_adapter_as_base_plus_adapter(blind_auto):
    """On the blind quick zoo, a LoRA adapter enters `auto`'s FW pool by its probe evidence (not for FroM),
    only the adapter repo is downloaded, the recipe names it ``BASE+ADAPTER``; card and trace label it by repo id."""
    from sqlalchemy import select

    from db import Probe, open_store
    from mergekit_from.auto import shortlist
    from zoo.scoring import score_target

    truth, out, run = blind_auto.truth, blind_auto.first.out, blind_auto.first.run
    adapters = [s["repo_id"] for s in run["sources"] if truth[s["repo_id"]].startswith("lora-")]
    assert adapters, [truth[s["repo_id"]] for s in run["sources"]]
    for rid in adapters:  # in by evidence: aligned with its own task's gradient
        task = truth[rid].removeprefix("lora-")
        assert next(s for s in run["sources"] if s["repo_id"] == rid)["components"]["alignment"]["per_task"][task] > 0

    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    adapter_refs = [m["model"] for m in recipe["models"] if "+" in m["model"]]
    assert len(adapter_refs) == len(adapters)
    trace = json.loads((out / "fw_trace.json").read_text())
    for ref in adapter_refs:
        base_path, adapter_path = ref.split("+")
        assert Path(base_path) == Path(recipe["base_model"]) and (Path(adapter_path) / "adapter_config.json").is_file()
        assert not any(Path(adapter_path).glob("model*.safetensors"))  # the adapter repo only, never a full copy
        assert ref in trace["pool"]
    card = (out / "README.md").read_text()
    assert all(rid in card for rid in adapters)

    store = open_store(blind_auto.db)
    with store.session() as s:
        (key,) = set(s.scalars(select(Probe.gradient_key)))
    candidates = score_target(store, blind_auto.base, "a model for two tasks", gradient_key=key)
    from_pool, from_excluded = shortlist(store, candidates, k=100, tasks=list(blind_auto.tasks))
    store.close()
    assert not set(adapters) & {m.repo_id for m in from_pool}
    assert set(adapters) <= {e["repo_id"] for e in from_excluded if e["why"].startswith("LoRA adapter")}
