"""RegMean: the solve kernel, the Gram hooks, and end-to-end merges through `mergekit-from yaml`."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fw_fixtures import write_recipe, zoo
from safetensors.torch import load_file

from mergekit.config import MergeConfiguration

from mergekit_from import calibration, prepass, regmean_grams
from mergekit_from.calibration import Batch
from mergekit_from.cli import main
from mergekit_from.methods.regmean import regmean_solve, shrink


def random_spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g)
    return x.T @ x / (4 * n)


def test_identical_grams_give_the_simple_average():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 8, generator=g) for _ in range(3)]
    gram = random_spd(8, seed=1)
    merged = regmean_solve(((w, gram) for w in weights), alpha=0.7)
    assert torch.allclose(merged, torch.stack(weights).mean(0), atol=1e-5)


def test_grams_weight_the_inputs_they_saw():
    # model 0 only ever saw feature 0, model 1 only feature 1: each column comes from its model
    w0, w1 = torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)
    g0, g1 = torch.diag(torch.tensor([1.0, 1e-6])), torch.diag(torch.tensor([1e-6, 1.0]))
    merged = regmean_solve([(w0, g0), (w1, g1)], alpha=1.0)
    assert torch.allclose(merged[:, 0], torch.ones(2), atol=1e-4)
    assert torch.allclose(merged[:, 1], torch.full((2,), 3.0), atol=1e-4)


def test_shrink_scales_off_diagonal_only():
    gram = random_spd(4, seed=2)
    shrunk = shrink(gram, 0.25)
    assert torch.allclose(torch.diagonal(shrunk), torch.diagonal(gram))
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(shrunk[off], 0.25 * gram[off])


def test_hooks_keep_the_running_mean_over_real_tokens():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.proj = torch.nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask):
            return self.proj(self.emb(input_ids))

    model = Toy()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batches = [Batch(ids[:1], mask[:1], ids[:1], mask[:1]), Batch(ids[1:], mask[1:], ids[1:], mask[1:])]
    grams = regmean_grams.model_grams(model, {"proj.weight"}, batches)
    x = model.emb(torch.tensor([1, 2, 3, 4, 5])).detach()
    assert set(grams) == {"proj.weight"}
    assert torch.allclose(grams["proj.weight"], x.T @ x / 5, atol=1e-6)


def regmean_recipe(tasks: list[str], **settings) -> dict:
    z = zoo()
    return {
        "merge_method": "regmean",
        "base_model": str(z["base"]),
        "dtype": "float32",
        "models": [{"model": str(z[f"expert_{t}"])} for t in tasks],
        "regmean": {"calibration": {str(z[f"expert_{t}"]): str(z[f"data_{t}"]) for t in tasks}, **settings},
    }


def run(tmp_path: Path, recipe: dict) -> dict[str, torch.Tensor]:
    cfg = write_recipe(tmp_path / "rm.yml", recipe)
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(tmp_path / "out"), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return load_file(str(tmp_path / "out" / "model.safetensors"))


def test_one_model_returns_that_model(tmp_path):
    merged = run(tmp_path, regmean_recipe(["rev"], alpha=0.5))
    expert = load_file(str(zoo()["expert_rev"] / "model.safetensors"))
    assert set(merged) == set(expert)
    for name, t in expert.items():
        assert torch.allclose(merged[name], t, atol=1e-4, rtol=1e-3), name


def test_two_models_linear_weights_solved_others_averaged(tmp_path, monkeypatch):
    """Also checks that Grams are computed one model at a time (instrumented skeleton loader)."""
    alive: list[weakref.ref] = []
    worst = [0]
    original = prepass.load_skeleton

    def tracked(*args, **kwargs):
        model = original(*args, **kwargs)
        alive.append(weakref.ref(model))
        worst[0] = max(worst[0], sum(r() is not None for r in alive))
        return model

    monkeypatch.setattr(regmean_grams, "load_skeleton", tracked)
    merged = run(tmp_path, regmean_recipe(["rev", "sort"]))
    assert len(alive) == 2 and worst[0] == 1
    a = load_file(str(zoo()["expert_rev"] / "model.safetensors"))
    b = load_file(str(zoo()["expert_sort"] / "model.safetensors"))
    for name in ("model.norm.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-6), name
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-3)


def test_regmean_beats_the_average_on_its_own_objective(tmp_path):
    """RegMean minimises Σ_i ‖X_i W − X_i W_i‖²; check that against the plain mean on real Grams."""
    z = zoo()
    recipe = regmean_recipe(["rev", "sort"], alpha=1.0)
    merged = run(tmp_path, recipe)
    pre = regmean_grams.RegMeanPrePass(MergeConfiguration.model_validate(recipe), recipe, tmp_path)
    tok = calibration.load_tokenizer(z["base"])
    grams = {}
    for i, ref in enumerate(pre.pool.refs):
        enc = calibration.encode(pre.samples[ref], tok)
        model = prepass.load_skeleton(Path(pre.pool.indexes[i].root))
        batches = calibration.batches(enc, 8, tok.pad_token_id)
        grams[ref] = regmean_grams.model_grams(model, set(pre.pool.base.shapes), batches)
    name = "model.layers.1.self_attn.q_proj.weight"
    ws = {ref: load_file(str(Path(ref) / "model.safetensors"))[name] for ref in pre.pool.refs}

    def loss(w):
        return sum(float(torch.trace((w - ws[r]) @ grams[r][name] @ (w - ws[r]).T)) for r in ws)

    assert loss(merged[name]) < loss(sum(ws.values()) / 2)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_is_validated(tmp_path, alpha):
    cfg = write_recipe(tmp_path / "rm.yml", regmean_recipe(["rev"], alpha=alpha))
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "regmean settings: alpha:" in result.output
