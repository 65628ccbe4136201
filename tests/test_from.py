"""FroM through the real mergekit pipeline (`mergekit-from yaml`) against independent maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mergekit.merge_methods import merge_state_dicts
from safetensors.torch import load_file

from mergekit_from.methods.from_merge import from_coefficients, from_merge_tensors

from tests.fixtures.models import load_model, merge, run_cli


def _sd(path):
    return load_file(str(path / "model.safetensors"))


def closed_form(base, models, k, lam=1.0, priors=None):
    """FroM in float64 numpy, written from the formula, not from the plugin's code."""
    priors = priors or [1.0] * len(models)
    out = {}
    for name, w0 in base.items():
        w0 = w0.double().numpy()
        taus = [m[name].double().numpy() - w0 for m in models]
        norms = np.array([np.linalg.norm(t) for t in taus])
        w = np.array(priors) * np.where(norms > 0, norms, 0.0) ** k * (norms > 0)
        out[name] = w0 if w.sum() == 0 else w0 + lam * sum(wi * t for wi, t in zip(w, taus)) / w.sum()
    return out


def assert_close(merged, expected, tol=1e-6):
    assert set(merged) == set(expected)
    for name, ref in expected.items():
        diff = np.abs(merged[name].double().numpy() - ref).max()
        assert diff <= tol, f"{name}: max abs diff {diff}"


def recipe(tiny, names, **params):
    return {
        "merge_method": "from",
        "base_model": str(tiny["base"]),
        "models": [{"model": str(tiny[n])} for n in names],
        "parameters": params,
        "dtype": "float32",
    }


def test_matches_closed_form_with_priors(tiny, tmp_path):
    r = recipe(tiny, ["a", "b", "c"], k=1.5, **{"lambda": 0.8})
    r["models"][1]["parameters"] = {"weight": 0.5}
    merged = merge(tmp_path, r)
    expected = closed_form(_sd(tiny["base"]), [_sd(tiny[n]) for n in "abc"], k=1.5, lam=0.8, priors=[1, 0.5, 1])
    assert_close(merged, expected)


def test_default_k_is_used_and_differs_from_mean(tiny, tmp_path):
    merged = merge(tmp_path, recipe(tiny, ["a", "b"]))
    base, models = _sd(tiny["base"]), [_sd(tiny[n]) for n in "ab"]
    assert_close(merged, closed_form(base, models, k=2.0))
    mean = closed_form(base, models, k=0.0)
    name = "model.layers.0.mlp.up_proj.weight"
    assert np.abs(merged[name].double().numpy() - mean[name]).max() > 1e-4


def test_k0_equals_mergekit_linear(tiny, tmp_path):
    ours = merge(tmp_path, recipe(tiny, ["a", "b", "c"], k=0.0), "from")
    linear = merge(
        tmp_path,
        {"merge_method": "linear", "models": [{"model": str(tiny[n]), "parameters": {"weight": 1.0}} for n in "abc"],
         "dtype": "float32"},
        "linear",
    )
    assert set(ours) == set(linear)
    for name in ours:
        torch.testing.assert_close(ours[name], linear[name], atol=1e-6, rtol=0)


def test_large_k_selects_largest_norm_task_vector(tiny, tmp_path):
    merged = merge(tmp_path, recipe(tiny, ["a", "b", "c"], k=2000.0))
    base, models = _sd(tiny["base"]), [_sd(tiny[n]) for n in "abc"]
    for name, w0 in base.items():
        largest = max(models, key=lambda m: float((m[name] - w0).norm()))
        torch.testing.assert_close(merged[name], largest[name], atol=1e-6, rtol=0)


def test_invariant_to_model_order(tiny, tmp_path):
    fwd = merge(tmp_path, recipe(tiny, ["a", "b", "c"], k=3.0), "fwd")
    rev = merge(tmp_path, recipe(tiny, ["c", "b", "a"], k=3.0), "rev")
    for name in fwd:
        torch.testing.assert_close(fwd[name], rev[name], atol=1e-7, rtol=0)


def test_scope_linear_averages_non_linear_tensors(tiny, tmp_path):
    merged = merge(tmp_path, recipe(tiny, ["a", "b"], k=4.0, scope="linear"))
    base, models = _sd(tiny["base"]), [_sd(tiny[n]) for n in "ab"]
    fro, mean = closed_form(base, models, k=4.0), closed_form(base, models, k=0.0)
    for name in merged:
        linear = base[name].ndim == 2 and "embed_tokens" not in name and "lm_head" not in name
        ref = fro[name] if linear else mean[name]
        assert np.abs(merged[name].double().numpy() - ref).max() <= 1e-6, name


def test_frozen_tensor_gets_no_weight(tiny, tmp_path):
    """A fine-tune that left attention untouched must not dilute the other's attention update."""
    merged = merge(tmp_path, recipe(tiny, ["mlp_only", "a"], k=0.0))
    a = _sd(tiny["a"])
    name = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[name], a[name], atol=1e-7, rtol=0)


def test_python_api_merge_state_dicts(tiny):
    base, a, b = (_sd(tiny[n]) for n in ("base", "a", "b"))
    out = merge_state_dicts({"base": base, "a": a, "b": b}, "from", base="base", parameters={"k": 1.0})
    expected = closed_form(base, [a, b], k=1.0)
    assert_close(out, expected)


# --- the kernel, without disk ---------------------------------------------------------------

def test_coefficients_in_log_space_do_not_overflow():
    norms = torch.tensor([1e3, 2e3, 0.0])
    w = from_coefficients(norms, torch.ones(3), k=1e4)
    assert torch.isfinite(w).all()
    assert w.tolist() == [0.0, 1.0, 0.0]


def test_all_zero_task_vectors_return_base():
    base = torch.randn(4, 4)
    out = from_merge_tensors(base, [base.clone(), base.clone()], k=2.0)
    assert torch.equal(out, base)


def test_zero_priors_return_base():
    base = torch.randn(3)
    out = from_merge_tensors(base, [base + 1, base - 2], k=1.0, priors=[0.0, 0.0])
    assert torch.equal(out, base)


def test_half_precision_accumulates_in_fp32():
    g = torch.Generator().manual_seed(0)
    base32 = torch.randn(256, 256, generator=g)
    tensors32 = [base32 + 1e-2 * torch.randn(256, 256, generator=g) for _ in range(8)]
    out = from_merge_tensors(base32.half(), [t.half() for t in tensors32], k=2.0)
    assert out.dtype == torch.float16
    ref = from_merge_tensors(base32.half().double(), [t.half().double() for t in tensors32], k=2.0)
    # only the final rounding to fp16 may differ from a float64 computation on the same inputs
    assert (out.double() - ref).abs().max() <= torch.finfo(torch.float16).eps * ref.abs().max()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_names_model_and_tensor(bad):
    from mergekit_from.errors import TensorValueError

    base = torch.zeros(3)
    t = torch.tensor([0.0, bad, 1.0])
    with pytest.raises(TensorValueError, match=r"model 'ft_x' has NaN/Inf values in tensor 'w'"):
        from_merge_tensors(base, [base + 1, t], names=["ft_ok", "ft_x"], tensor_name="w")


def test_methods_command_lists_plugin_and_builtins():
    result = run_cli("methods", "--json")
    assert result.exit_code == 0
    import json

    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    assert {"from", "linear", "task_arithmetic", "ties"} <= set(rows)
    params = {p["name"]: p for p in rows["from"]["parameters"]}
    assert params["k"]["default"] == 2.0 and params["k"]["type"] == "float >= 0"
    assert params["lambda"]["type"] == "float > 0"
    assert rows["from"]["origin"] == "mergekit-from" and rows["linear"]["origin"] == "mergekit"


def test_registration_is_idempotent(monkeypatch):
    import importlib

    from mergekit.merge_methods import registry

    import mergekit_from

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    assert mergekit_from.register_all() == []
    importlib.reload(mergekit_from)  # a second import in a process that already has "from"
    assert registry.get("from").spec.name == "from"
    del registry._METHODS["from"]
    assert mergekit_from.register_all() == ["from"]


def test_fp32_norm_overflow_falls_back_to_float64():
    base = torch.zeros(4)
    big = torch.full((4,), 3e38)  # finite, but ||.||_2 overflows in fp32
    out = from_merge_tensors(base, [big, torch.full((4,), 1.0)], k=1.0)
    assert torch.isfinite(out).all() and out[0] > 2.9e38


def test_relative_local_paths_merge_offline(tiny, tmp_path, monkeypatch):
    """`models: [{model: ft_a}]` relative to the working directory: mergekit's card step would
    ask the Hub whether `ft_a` is a repo, which fails offline."""
    monkeypatch.chdir(tiny["base"].parent)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    merged = merge(tmp_path, {"merge_method": "from", "base_model": "base",
                              "models": [{"model": "ft_a"}, {"model": "ft_b"}], "dtype": "float32"})
    assert_close(merged, closed_form(_sd(tiny["base"]), [_sd(tiny["a"]), _sd(tiny["b"])], k=2.0))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "FroM (Frobenius-norm adaptive merging)" in card
    assert "\n# out\n" in card  # titled with the output's name, not the staging folder's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.yml"]  # no staging leftovers
