"""FW-Merging (fw_hard / fw_soft) end to end through `mergekit-from yaml`, on tiny task zoo experts."""

from __future__ import annotations

import itertools
import json
import weakref
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_from import calibration
from mergekit_from.cli import main
from mergekit_from.methods.fw_plan import FWPlan, Move, fw_step, ties_trim
from mergekit_from.prepass.lmo import lmo_picks, step_coefficient
from mergekit_from.prepass.objective import load_skeleton, task_objective
from mergekit_from.prepass.pool import ref_string
from mergekit_from.weights import TensorIndex

from tests.fixtures.fw_experts import experts, fw_recipe
from tests.fixtures.models import write_recipe


def run_fw(tmp_path: Path, recipe: dict, name: str = "out") -> tuple[Path, dict]:
    cfg = write_recipe(tmp_path / f"{name}.yml", recipe)
    out = tmp_path / name
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "fw_trace.json").read_text())


def objective(model_dir: Path, tasks: list[str]) -> float:
    """Mean response cross-entropy over the target tasks' calibration files (the FW objective)."""
    z = experts()
    tok = calibration.load_tokenizer(z["base"])
    data = [calibration.encode(calibration.read_jsonl(z[f"data_{t}"]), tok) for t in tasks]
    batches = [list(calibration.batches(e, 8, tok.pad_token_id)) for e in data]
    return task_objective(load_skeleton(model_dir), batches, [len(e) for e in data], "cross_entropy", False)


def expert(task: str) -> str:
    return ref_string(str(experts()[f"expert_{task}"]))


@pytest.mark.parametrize("score, target", [("cosine", "reverse"), ("inner_product", "maxchar")])
def test_hard_picks_the_targets_own_expert_first_and_reduces_the_objective(tmp_path, score, target):
    recipe = fw_recipe("fw_hard", ["shift", "reverse", "maxchar"], [target], max_iters=3, score=score, step_size=1.0)
    out, trace = run_fw(tmp_path, recipe)
    its = trace["iterations"]
    assert its[0]["picked"] == expert(target)
    assert trace["final_objective"] < its[0]["objective"] - 0.01
    # The per-tensor kernel replays the pre-pass exactly: the written model has the final objective.
    assert objective(out, [target]) == pytest.approx(trace["final_objective"], abs=1e-4)
    assert (out / "fw_trace.png").stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "FW-Merging (hard" in card and "(intermediate computed by the pre-pass) fw_initial" in card
    assert ".prepass-" not in card
    assert "fw_hard" in (out / "mergekit_config.yml").read_text()


def test_per_tensor_lmo_picks_per_tensor_and_replays(tmp_path):
    recipe = fw_recipe("fw_hard", ["shift", "reverse", "maxchar"], ["reverse", "maxchar"], max_iters=2, lmo="tensor")
    out, trace = run_fw(tmp_path, recipe)
    names = set(TensorIndex.open(experts()["base"]).shapes)
    for it in trace["iterations"]:
        assert set(it["picked_by_tensor"]) == names
        assert sum(it["pick_share"].values()) == pytest.approx(1.0)
    assert objective(out, ["reverse", "maxchar"]) == pytest.approx(trace["final_objective"], abs=1e-4)


def test_lmo_granularity_on_a_score_matrix():
    # candidate 0 wins tensor "a" by far; candidate 1 wins "b" and the sum.
    scores = torch.tensor([[-1.0, 5.0], [0.0, -2.0]])
    assert lmo_picks(scores, ["a", "b"], "model") == {"a": 1, "b": 1}
    assert lmo_picks(scores, ["a", "b"], "tensor") == {"a": 0, "b": 1}
    # soft: a target may not re-pick what an earlier target picked in the same iteration
    assert lmo_picks(scores, ["a", "b"], "model", [{"a": 1, "b": 1}]) == {"a": 0, "b": 0}


def test_step_schedule_and_update_rules(tmp_path):
    assert [step_coefficient(t, 0.1, 0.3) for t in range(4)] == pytest.approx([0.03, 0.02, 0.015, 0.012])
    theta, s = torch.zeros(10), torch.arange(10.0)
    assert torch.allclose(fw_step(theta, [(0.5, s)], None), 0.5 * s)
    trimmed = ties_trim(s - theta, 0.2)
    assert torch.equal(trimmed, torch.tensor([0.0] * 8 + [8.0, 9.0]))
    recipe = fw_recipe("fw_hard", ["shift", "reverse"], ["reverse"], max_iters=4, step_size=0.5, update="ties",
                       init="base")
    out, trace = run_fw(tmp_path, recipe)
    assert [it["step"] for it in trace["iterations"]] == pytest.approx([0.15, 0.1, 0.075, 0.06])
    assert objective(out, ["reverse"]) == pytest.approx(trace["final_objective"], abs=1e-4)


def test_initialisations(tmp_path):
    """Every init starts the search somewhere else (an ignored ``init`` would start them all at one
    point); base and a model folder start exactly at that model."""
    z = experts()
    starts, results = {}, {}
    for init in ("base", "task_arithmetic", "ties", "from", "expert_maxchar"):
        given = str(z[init]) if init.startswith("expert") else init
        recipe = fw_recipe("fw_hard", ["shift", "reverse"], ["reverse"], max_iters=1, init=given, samples_per_task=8)
        out, trace = run_fw(tmp_path, recipe, name=init)
        starts[init] = trace["iterations"][0]["objective"]
        if init in ("base", "expert_maxchar"):
            tok = calibration.load_tokenizer(z["base"])  # iteration 0 sees the first 8 samples at θ₀
            enc = calibration.encode(calibration.read_jsonl(z["data_reverse"], 8), tok)
            model = load_skeleton(z["base" if init == "base" else init])
            batches = [list(calibration.batches(enc, 8, tok.pad_token_id))]
            start = task_objective(model, batches, [8], "cross_entropy", False)
            assert starts[init] == pytest.approx(start, abs=1e-5)
        merged = load_file(str(out / "model.safetensors"))
        assert set(merged) == set(TensorIndex.open(z["base"]).shapes)
        assert all(torch.isfinite(t).all() for t in merged.values())
        results[init] = merged
    for a, b in itertools.combinations(starts, 2):
        assert abs(starts[a] - starts[b]) > 1e-4, (a, b, starts)
        assert any(not torch.equal(results[a][n], results[b][n]) for n in results[a]), (a, b)


def test_soft_picks_one_model_per_target_and_its_inner_loop_reduces_the_loss(tmp_path):
    recipe = fw_recipe(
        "fw_soft", ["shift", "reverse", "maxchar", "rotate"], ["reverse", "maxchar"], max_iters=2,
        ada_iters=25, ada_lr=5e-2, ada_loss="cross_entropy", ada_batch_size=8,
    )
    out, trace = run_fw(tmp_path, recipe)
    for it in trace["iterations"]:
        picks = [p["picked"] for p in it["picks_per_target"].values()]
        assert len(picks) == 2 and len(set(picks)) == 2
        assert it["inner_loss"]["last"] < it["inner_loss"]["first"]
    assert trace["final_objective"] < trace["iterations"][0]["objective"]
    assert objective(out, ["reverse", "maxchar"]) == pytest.approx(trace["final_objective"], abs=1e-4)


def test_streaming_never_holds_two_candidates(tmp_path, monkeypatch):
    """Instrument the loader: count candidate tensors alive whenever a candidate tensor is read."""
    z = experts()
    candidates = {str(z[f"expert_{t}"]) for t in ("shift", "reverse", "maxchar")}
    live: dict[int, str] = {}
    worst = {"tensors": 0, "models": 0}
    original = TensorIndex.tensor

    def tracked(self, name):
        t = original(self, name)
        root = str(self.root)
        if root in candidates:
            live[id(t)] = root
            weakref.finalize(t, live.pop, id(t), None)
            worst["tensors"] = max(worst["tensors"], len(live))
            worst["models"] = max(worst["models"], len(set(live.values())))
        return t

    monkeypatch.setattr(TensorIndex, "tensor", tracked)
    recipe = fw_recipe("fw_hard", ["shift", "reverse", "maxchar"], ["reverse"], max_iters=2, samples_per_task=8)
    run_fw(tmp_path, recipe)
    assert worst == {"tensors": 1, "models": 1}
    # the instrument does see a consumer that keeps candidates around
    held = [TensorIndex.open(c).tensor("model.norm.weight") for c in sorted(candidates)]
    assert worst["models"] == 3 and len(held) == 3


def test_objectives_on_known_logits():
    from mergekit_from.calibration import Batch
    from mergekit_from.prepass.objective import sample_losses

    ids = torch.tensor([[1, 2, 3, 4]])
    labels = torch.tensor([[-100, -100, 3, 4]])
    prompt = torch.tensor([[1, 1, 0, 0]])
    batch = Batch(ids, torch.ones_like(ids), labels, prompt)
    uniform = torch.zeros(1, 4, 8)
    assert sample_losses(uniform, batch, "entropy").item() == pytest.approx(torch.log(torch.tensor(8.0)).item())
    assert sample_losses(uniform, batch, "cross_entropy").item() == pytest.approx(torch.log(torch.tensor(8.0)).item())
    sharp = torch.full((1, 4, 8), -30.0)
    sharp[0, 1, 3] = sharp[0, 2, 4] = 30.0  # positions 1 and 2 predict the labelled tokens 3 and 4
    assert sample_losses(sharp, batch, "cross_entropy").item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_objective_runs_on_prompts(tmp_path):
    recipe = fw_recipe("fw_hard", ["shift", "reverse"], ["reverse"], max_iters=2, objective="entropy",
                       samples_per_task=8)
    _, trace = run_fw(tmp_path, recipe)
    assert trace["settings"]["objective"] == "entropy"
    assert all(0 < it["objective"] < torch.log(torch.tensor(32.0)).item() for it in trace["iterations"])


def test_initial_model_as_a_vertex_and_bfloat16_inputs(tmp_path):
    recipe = fw_recipe("fw_hard", ["shift", "reverse"], ["reverse"], max_iters=2, lmo="tensor", initial_vertex=True)
    out, trace = run_fw(tmp_path, recipe)
    assert len(trace["pool"]) == 3 and trace["pool"][2].endswith("fw_initial")
    assert objective(out, ["reverse"]) == pytest.approx(trace["final_objective"], abs=1e-4)
    recipe["dtype"] = "bfloat16"  # mergekit hands the kernel bf16 tensors; the replay still runs in fp32
    out, trace = run_fw(tmp_path, recipe, name="bf16")
    merged = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    assert objective(out, ["reverse"]) == pytest.approx(trace["final_objective"], abs=5e-2)


def test_data_paths_are_relative_to_the_recipe(tmp_path):
    z = experts()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reverse.jsonl").write_bytes(z["data_reverse"].read_bytes())
    recipe = fw_recipe("fw_soft", ["shift", "reverse"], ["reverse"], max_iters=1, ada_iters=2)
    recipe["fw_soft"]["targets"] = ["data/reverse.jsonl"]
    _, trace = run_fw(tmp_path, recipe)
    assert trace["targets"] == ["reverse"]


def test_effective_coefficients_recurrence():
    from mergekit_from.prepass.trace import effective_coefficients

    plan = FWPlan("fw_hard", "theta0", ["w", "v"], None,
                  [[Move(0.5, "A")], [Move({"w": 0.2, "v": 0.0}, {"w": "base", "v": "B"})]])
    coeffs = effective_coefficients(plan, "base", lambda name: {"A": 0.3, "B": 0.3}, {"w": 3, "v": 1})
    # after step 1 (both tensors): A 0.15 + 0.5 = 0.65, B 0.15; step 2 on w: x0.8 towards the base
    assert coeffs == {"A": pytest.approx(0.75 * 0.52 + 0.25 * 0.65), "B": pytest.approx(0.75 * 0.12 + 0.25 * 0.15)}


def test_trace_coefficients_reproduce_the_written_model(tmp_path):
    """With per-model picks and task-arithmetic steps, θ − base = Σ a_i τ_i exactly."""
    pool = ["shift", "reverse", "maxchar"]
    recipe = fw_recipe("fw_hard", pool, ["reverse"], max_iters=3, step_size=1.0)
    out, trace = run_fw(tmp_path, recipe)
    coeffs = trace["coefficients"]
    assert set(coeffs) == {expert(t) for t in pool}
    z = experts()
    base = load_file(str(z["base"] / "model.safetensors"))
    merged = load_file(str(out / "model.safetensors"))
    expert_weights = {expert(t): load_file(str(z[f"expert_{t}"] / "model.safetensors")) for t in pool}
    for name, b in base.items():
        expected = b + sum(c * (expert_weights[r][name] - b) for r, c in coeffs.items())
        torch.testing.assert_close(merged[name], expected, atol=2e-5, rtol=0)


def test_hard_as_the_official_ties_mode_runs_and_records_its_choices(tmp_path):
    """init: ties with θ₀ as a vertex (the official code's TIES mode): the trace and the recorded recipe say so,
    and θ₀ differs from task arithmetic's."""
    import yaml

    runs = {}
    for init in ("ties", "task_arithmetic"):
        recipe = fw_recipe("fw_hard", ["shift", "reverse"], ["reverse"], max_iters=2, init=init, initial_vertex=True,
                           samples_per_task=8)
        out, runs[init] = run_fw(tmp_path, recipe, name=init)
    trace = runs["ties"]
    assert trace["settings"]["init"] == "ties" and trace["settings"]["initial_vertex"] is True
    assert len(trace["pool"]) == 3 and trace["pool"][2].endswith("fw_initial")
    recorded = yaml.safe_load((tmp_path / "ties" / "mergekit_config.yml").read_text())["fw_hard"]
    assert recorded["init"] == "ties" and recorded["initial_vertex"] is True and trace["settings"]["ties_density"] == 0.2
    assert abs(trace["iterations"][0]["objective"] - runs["task_arithmetic"]["iterations"][0]["objective"]) > 1e-3
