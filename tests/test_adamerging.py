"""AdaMerging (``merge_method: adamerging``) end to end, and its coefficient loop (shared with fw_soft)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_from import calibration
from mergekit_from.calibration import Sample
from mergekit_from.methods.fw_plan import FWPlan
from mergekit_from.prepass.adamerging import PLAN_FILE, fit_coefficients
from mergekit_from.prepass.objective import TaskBatches, batch_loss, load_skeleton, merge_parameters
from mergekit_from.prepass.settings import AdaMergingSettings

from mergekit_from.weights import TensorIndex

from tests.fixtures.fw_experts import experts, fw_recipe
from tests.fixtures.models import write_recipe
from tests.test_fw import run_fw

POOL = ["shift", "reverse", "maxchar"]
TARGETS = ["reverse", "maxchar"]


def prompt_entropy(model_dir: Path, tasks: list[str]) -> float:
    """AdaMerging's objective: mean entropy of the predictions at the targets' prompts."""
    z = experts()
    tok = calibration.load_tokenizer(z["base"])
    prompts = {t: [Sample(s.prompt) for s in calibration.read_jsonl(z[f"data_{t}"])] for t in tasks}
    return TaskBatches.of(prompts, tok, 256, 8).objective(load_skeleton(model_dir), "entropy")


def prepass_plan(tmp_path: Path, recipe: dict, name: str) -> tuple[FWPlan, dict]:
    """Run only the pre-pass of ``recipe``; its plan and the config it hands to mergekit."""
    from mergekit.options import MergeOptions

    from mergekit_from.recipe import check_recipe_file

    cfg = write_recipe(tmp_path / f"{name}.yml", recipe)
    checked = check_recipe_file(cfg, MergeOptions(quiet=True))
    (tmp_path / name).mkdir()
    (tmp_path / f"{name}-work").mkdir()
    config = checked.prepass.run(tmp_path / name, tmp_path / f"{name}-work", MergeOptions(quiet=True))
    return FWPlan.read(tmp_path / f"{name}-work" / PLAN_FILE), config.parameters


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_lowers_its_objective_and_the_output_is_what_it_measured(tmp_path, granularity):
    recipe = fw_recipe("adamerging", POOL, TARGETS, ada_iters=20, ada_lr=5e-2, granularity=granularity,
                       ada_batch_size=8)
    out, trace = run_fw(tmp_path, recipe)
    curve = trace["iterations"][0]["inner_loss"]
    assert curve["last"] < curve["first"] - 1e-3
    assert trace["final_objective"] < trace["iterations"][0]["objective"]  # after vs at the base
    assert prompt_entropy(out, TARGETS) == pytest.approx(trace["final_objective"], abs=1e-4)
    assert len(trace["iterations"][0]["mean_coefficient"]) == len(POOL) and (out / "fw_trace.png").is_file()
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())


def test_task_wise_has_one_coefficient_per_model_layer_wise_one_per_tensor(tmp_path):
    plans = {g: prepass_plan(tmp_path, fw_recipe("adamerging", POOL[:2], TARGETS[:1], ada_iters=2, granularity=g,
                                                 samples_per_task=8), g)[0]
             for g in ("task", "layer")}
    task, layer = plans["task"], plans["layer"]
    assert len(task.steps) == len(layer.steps) == 1 and task.initial == layer.initial == str(experts()["base"])
    assert [m.vertex for m in task.steps[0]] == [m.vertex for m in layer.steps[0]] == [
        str(experts()[f"expert_{t}"]) for t in POOL[:2]]
    assert all(isinstance(m.coef, float) for m in task.steps[0])
    assert all(isinstance(m.coef, dict) and set(m.coef) == set(layer.tensors) for m in layer.steps[0])
    assert len({round(c, 9) for c in layer.steps[0][0].coef.values()}) > 1  # the tensors' coefficients moved apart


def test_on_a_one_model_pool_it_returns_that_model(tmp_path):
    """A pool holding only a copy of the base has τ = 0: every coefficient gives that model back."""
    z = experts()
    copy = shutil.copytree(z["expert_reverse"], tmp_path / "same")
    recipe = fw_recipe("adamerging", [], TARGETS, ada_iters=3, samples_per_task=8)
    recipe["base_model"], recipe["models"] = str(z["expert_reverse"]), [{"model": str(copy)}]
    out, trace = run_fw(tmp_path, recipe)
    merged, model = load_file(str(out / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert set(merged) == set(model) and all(torch.equal(merged[n], model[n]) for n in model)
    assert trace["iterations"][0]["mean_coefficient"] == [pytest.approx(0.3)]


def test_one_expert_at_coefficient_one_is_that_expert(tmp_path):
    """base + 1·(expert − base) replays to the expert: the plan's coefficients are on the task vectors."""
    z = experts()
    recipe = fw_recipe("adamerging", ["maxchar"], ["reverse"], ada_iters=1, ada_init=1.0, ada_lr=1e-9,
                       granularity="task", samples_per_task=8)
    out, _ = run_fw(tmp_path, recipe)
    merged, model = load_file(str(out / "model.safetensors")), load_file(str(z["expert_maxchar"] / "model.safetensors"))
    assert max(float((merged[n] - model[n]).abs().max()) for n in model) < 1e-6


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_coefficient_gradients_per_tensor_equal_autograd_through_the_merge(granularity):
    """⟨∂L/∂θ_p, τ_k,p⟩ taken tensor by tensor is autograd's gradient of L(θ₀ + Σ c τ) in c."""
    z = experts()
    tok = calibration.load_tokenizer(z["base"])
    prompts = {t: [Sample(s.prompt) for s in calibration.read_jsonl(z[f"data_{t}"], 6)] for t in TARGETS}
    encoded = TaskBatches.of(prompts, tok, 256, 8).encoded
    model = load_skeleton(z["base"])
    params = merge_parameters(model, TensorIndex.open(z["base"]))
    experts_ = [load_skeleton(z[f"expert_{t}"]).state_dict() for t in POOL]
    taus = [{n: e[n] - p.detach() for n, p in params.items()} for e in experts_]
    shape = (len(POOL),) if granularity == "task" else (len(POOL), len(params))
    start = torch.rand(shape) * 0.5

    c = start.clone().requires_grad_(True)
    per = c.reshape(len(POOL), -1).expand(len(POOL), len(params))
    merged = {n: p.detach() + sum(per[k, j] * taus[k][n] for k in range(len(POOL))) for j, (n, p) in
              enumerate(params.items())}
    loss = sum(batch_loss(model, b, "entropy", params=merged) / len(items)
               for items in encoded.values() for b in calibration.batches(items, 8, tok.pad_token_id))
    loss.backward()

    seen = {}
    settings = AdaMergingSettings(targets=TARGETS, ada_iters=1, ada_batch_size=100, batch_size=8)
    fit_coefficients(model, params, lambda k, n: taus[k][n], start.clone(), encoded, settings, tok.pad_token_id,
                     lambda value, where, grads: seen.update(value=value, grad=grads["coefficients"].clone()),
                     "test")
    assert seen["value"] == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(seen["grad"], c.grad, rtol=1e-3, atol=1e-6)
