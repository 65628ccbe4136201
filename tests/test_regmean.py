"""RegMean: the solve kernel, the Gram hooks, and end-to-end merges through `mergekit-from yaml`."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit.config import MergeConfiguration

from mergekit_from import calibration
from mergekit_from.prepass import objective
from mergekit_from.prepass import regmean as regmean_grams
from mergekit_from.calibration import Batch
from mergekit_from.cli import main
from mergekit_from.methods.regmean import regmean_solve, shrink
from mergekit_from.weights import TensorIndex

from tests.fixtures.fw_experts import experts
from tests.fixtures.models import write_recipe


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
    z = experts()
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
    merged = run(tmp_path, regmean_recipe(["reverse"], alpha=0.5))
    expert = load_file(str(experts()["expert_reverse"] / "model.safetensors"))
    assert set(merged) == set(expert)
    for name, t in expert.items():
        assert torch.allclose(merged[name], t, atol=1e-4, rtol=1e-3), name


def test_two_models_linear_weights_solved_others_averaged(tmp_path, monkeypatch):
    """Also checks that Grams are computed one model at a time (instrumented skeleton loader)."""
    alive: list[weakref.ref] = []
    worst = [0]
    original = objective.load_skeleton

    def tracked(*args, **kwargs):
        model = original(*args, **kwargs)
        alive.append(weakref.ref(model))
        worst[0] = max(worst[0], sum(r() is not None for r in alive))
        return model

    monkeypatch.setattr(regmean_grams, "load_skeleton", tracked)
    merged = run(tmp_path, regmean_recipe(["reverse", "maxchar"]))
    assert len(alive) == 2 and worst[0] == 1
    a = load_file(str(experts()["expert_reverse"] / "model.safetensors"))
    b = load_file(str(experts()["expert_maxchar"] / "model.safetensors"))
    for name in ("model.norm.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-6), name
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(merged[name], (a[name] + b[name]) / 2, atol=1e-3)


def test_regmean_beats_the_average_on_its_own_objective(tmp_path):
    """RegMean minimises Σ_i ‖X_i W − X_i W_i‖²; check that against the plain mean on real Grams."""
    z = experts()
    recipe = regmean_recipe(["reverse", "maxchar"], alpha=1.0)
    merged = run(tmp_path, recipe)
    pre = regmean_grams.RegMeanPrePass(MergeConfiguration.model_validate(recipe), recipe, tmp_path)
    tok = calibration.load_tokenizer(z["base"])
    grams = {}
    for i, ref in enumerate(pre.pool.refs):
        enc = calibration.encode(pre.samples[ref], tok)
        model = objective.load_skeleton(Path(pre.pool.indexes[i].root))
        batches = calibration.batches(enc, 8, tok.pad_token_id)
        grams[ref] = regmean_grams.model_grams(model, set(pre.pool.base.shapes), batches)
    name = "model.layers.1.self_attn.q_proj.weight"
    ws = {ref: load_file(str(Path(ref) / "model.safetensors"))[name] for ref in pre.pool.refs}

    def loss(w):
        return sum(float(torch.trace((w - ws[r]) @ grams[r][name] @ (w - ws[r]).T)) for r in ws)

    assert loss(merged[name]) < loss(sum(ws.values()) / 2)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_is_validated(tmp_path, alpha):
    cfg = write_recipe(tmp_path / "rm.yml", regmean_recipe(["reverse"], alpha=alpha))
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "regmean settings: alpha:" in result.output


# -- GPT-2 (transformers Conv1D) and ill-conditioned Grams (issue 11) ---------------------------


@pytest.fixture(scope="module", params=["transformer.", ""], ids=["saved", "hub-style"])
def gpt2_pool(request, tmp_path_factory) -> dict[str, Path]:
    """A tiny GPT2LMHeadModel (Conv1D layers, tied head) and two noisy 'experts' of it, stored as
    ``save_pretrained`` writes them or, like openai-community/gpt2, without the ``transformer.`` prefix."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mergekit_from.taskzoo.tokenizer import CharVocab
    from tests.fixtures.models import make_finetune

    root = tmp_path_factory.mktemp("gpt2")
    tok = CharVocab().hf_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    weights = root / "base" / "model.safetensors"
    sd = {k.replace("transformer.", request.param, 1): v for k, v in load_file(str(weights)).items()}
    save_file(sd, str(weights), metadata={"format": "pt"})
    return {"base": root / "base", "a": make_finetune(root / "base", root / "a", 0.02, seed=1),
            "b": make_finetune(root / "base", root / "b", 0.02, seed=2), "prefix": request.param}


def test_gpt2_conv1d_weights_get_grams_and_the_official_solve(tmp_path, gpt2_pool):
    """Conv1D stores W as [in, out]: the official code solves (Σ G̃_i)⁻¹ Σ G̃_i W_i with no transpose."""
    z, p = experts(), gpt2_pool
    data = {p[k]: z[f"data_{t}"] for k, t in (("a", "reverse"), ("b", "maxchar"))}
    recipe = {"merge_method": "regmean", "base_model": str(p["base"]), "dtype": "float32",
              "models": [{"model": str(m)} for m in data],
              "regmean": {"calibration": {str(m): str(d) for m, d in data.items()}, "alpha": 0.9, "ridge": 0}}
    merged = run(tmp_path, recipe)
    tok = calibration.load_tokenizer(p["base"])
    conv = "transformer.h.1.mlp.c_fc.weight"  # [32, 128]: [in, out]
    grams, weights = [], []
    for m, d in data.items():
        enc = calibration.encode(calibration.read_jsonl(d, 100), tok)
        model = objective.load_skeleton(m)
        stored = objective.stored_names(model, TensorIndex.open(m))
        g = regmean_grams.model_grams(model, set(stored), calibration.batches(enc, 8, tok.pad_token_id))
        assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                "transformer.h.0.mlp.c_proj.weight", conv} <= set(g)
        grams.append(shrink(g[conv].double(), 0.9))
        weights.append(load_file(str(m / "model.safetensors"))[stored[conv]].double())
    direct = torch.linalg.solve(sum(grams), sum(g @ w for g, w in zip(grams, weights)))
    assert torch.allclose(merged[conv].double(), direct, atol=1e-5)
    assert not torch.allclose(merged[conv].double(), sum(weights) / 2, atol=1e-3)


def test_weights_without_a_gram_are_named(caplog):
    class Mixer(torch.nn.Module):  # a 2-D weight that is neither nn.Linear nor Conv1D
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.weight

    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4), "mix": Mixer(), "proj": torch.nn.Linear(4, 4)})
    regmean_grams.warn_without_gram(model, {"emb.weight", "mix.weight", "proj.weight"}, {"proj.weight": None})
    assert "no Gram for the weights of Mixer (e.g. mix.weight)" in caplog.text and "emb" not in caplog.text


@pytest.fixture(scope="module")
def loud_pool(tmp_path_factory) -> dict[str, Path]:
    """A base with a few activation channels 1e4x larger than the rest (as real LLMs have), and two
    experts 0.1% of each weight matrix's norm away from it."""
    from tests.bad_input_cases.numerics import edited, massive_channels, nudged

    root = tmp_path_factory.mktemp("loud")
    base = edited(experts()["base"], root / "base", lambda sd: massive_channels(sd, 1e4))
    return {"base": base, "a": nudged(base, root / "a", seed=1), "b": nudged(base, root / "b", seed=2)}


def loud_recipe(pool: dict[str, Path], samples: int, **settings) -> dict:
    z = experts()
    data = {pool["a"]: z["data_reverse"], pool["b"]: z["data_maxchar"]}
    return {"merge_method": "regmean", "base_model": str(pool["base"]), "dtype": "float32",
            "models": [{"model": str(m)} for m in data],
            "regmean": {"calibration": {str(m): str(d) for m, d in data.items()}, "samples_per_task": samples,
                        **settings}}


def worst_change(merged: dict[str, torch.Tensor], base: Path) -> float:
    """The largest ‖merged − base‖ / ‖base‖ over weight matrices (the experts are 0.1% away)."""
    ref = load_file(str(base / "model.safetensors"))
    return max(float((merged[n] - t).norm() / t.norm()) for n, t in ref.items() if t.ndim == 2)


def test_ill_conditioned_grams_give_a_bounded_merge(tmp_path, loud_pool, caplog):
    """2 samples (~40 tokens, fewer than down_proj's 64 inputs): the official solve moved a tensor
    by 1.6x its norm (exit 0); the ridge keeps every tensor within 0.5%, and the short calibration is named."""
    merged = run(tmp_path, loud_recipe(loud_pool, samples=2))
    assert worst_change(merged, loud_pool["base"]) < 5e-3
    assert "calibration tokens, fewer than the input width of" in caplog.text
    assert "(e.g. model.layers.0.mlp.down_proj.weight, width 64)" in caplog.text


def test_unregularised_blow_up_is_refused(tmp_path, loud_pool):
    """The same inputs with ``ridge: 0`` (the official solve): exit 2 naming the tensor, nothing written."""
    cfg = write_recipe(tmp_path / "rm.yml", loud_recipe(loud_pool, samples=2, ridge=0))
    result = CliRunner().invoke(main, ["yaml", str(cfg), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "RegMean: merged tensor 'model.layers." in result.output and "more than 10x their spread" in result.output
    assert not (tmp_path / "out").exists()


def test_reach_check_allows_what_a_merge_can_mean():
    """Identical Grams give the mean (distance 0); one model gives itself; a solve that lands far
    outside the inputs does not pass."""
    from mergekit_from.errors import TensorValueError
    from mergekit_from.methods.regmean import check_reach

    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(4, 6, generator=g) for _ in range(2)]
    mean = sum(w.double() for w in ws) / 2
    check_reach(ws[0].double(), ws, mean, "w")  # an input itself: 1 spread away
    with pytest.raises(TensorValueError, match="merged tensor 'w' is .* from the inputs' mean, more than 10x"):
        check_reach(mean + 11 * (ws[0].double() - mean), ws, mean, "w")
    with pytest.raises(TensorValueError, match=r"raise ridge \(now 0.001; try 0.1\)"):  # what to try next
        check_reach(mean + 11 * (ws[0].double() - mean), ws, mean, "w", ridge=0.001)
    with pytest.raises(TensorValueError, match=r"raise ridge \(now 0.1; try 1\)"):
        check_reach(mean + 11 * (ws[0].double() - mean), ws, mean, "w", ridge=0.1)
