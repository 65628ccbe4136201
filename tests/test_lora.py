"""FroM on LoRA fine-tunes: mergekit's base+lora path, and adapters in -> adapter out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tests.fixtures.models import make_adapter, merge, run_cli

@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return [
        make_adapter(tiny["base"], root / "lora_a", seed=1),
        make_adapter(tiny["base"], root / "lora_b", seed=2, scale=0.08),
        make_adapter(tiny["base"], root / "lora_c", seed=3, r=2, alpha=4, targets=["q_proj", "v_proj"]),
    ]


def deltas(adapter_dir) -> dict[str, np.ndarray]:
    """module -> alpha/r * B @ A in float64, read straight from the adapter files."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key in sd:
        if key.endswith("lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            a = sd[key].double().numpy()
            b = sd[f"{module}.lora_B.weight"].double().numpy()
            out[module] = cfg["lora_alpha"] / a.shape[0] * b @ a
    return out


def from_deltas(per_adapter: list[dict[str, np.ndarray]], k: float) -> dict[str, np.ndarray]:
    modules = set().union(*per_adapter)
    merged = {}
    for m in modules:
        ds = [d[m] for d in per_adapter if m in d]
        w = np.array([np.linalg.norm(d) ** k for d in ds])
        merged[m] = sum(wi * d for wi, d in zip(w, ds)) / w.sum()
    return merged


def base_name(module: str) -> str:
    return module.removeprefix("base_model.model.") + ".weight"


def test_base_plus_lora_inputs_through_yaml(tiny, adapters, tmp_path):
    recipe = {
        "merge_method": "from",
        "base_model": str(tiny["base"]),
        "models": [{"model": f"{tiny['base']}+{a}"} for a in adapters],
        "parameters": {"k": 1.0},
        "dtype": "float32",
    }
    merged = merge(tmp_path, recipe)
    base = load_file(str(tiny["base"] / "model.safetensors"))
    expected = from_deltas([deltas(a) for a in adapters], k=1.0)
    touched = {base_name(m) for m in expected}
    for name, w0 in base.items():
        ref = w0.double().numpy() + expected[f"base_model.model.{name[:-7]}"] if name in touched else w0.double().numpy()
        assert np.abs(merged[name].double().numpy() - ref).max() < 1e-6, name


@pytest.mark.parametrize("rank", [4, 10])
def test_adapter_out_loads_in_peft_and_matches_svd_cut(tiny, adapters, tmp_path, rank):
    out = tmp_path / f"merged_r{rank}"
    result = run_cli("lora", out, *adapters, "--base", tiny["base"], "--k", "2", "--rank", rank)
    assert result.exit_code == 0, result.output
    expected = from_deltas([deltas(a) for a in adapters], k=2.0)

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny["base"]), out)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    assert {n for n in layers} == set(expected)
    report = json.loads((out / "merge_report.json").read_text())
    total = resid = 0.0
    for module, full in expected.items():
        u, s, vh = np.linalg.svd(full, full_matrices=False)
        cut = (u[:, :rank] * s[:rank]) @ vh[:rank]
        got = layers[module].get_delta_weight("default").double().numpy()
        assert np.abs(got - cut).max() < 1e-5, module
        total += np.linalg.norm(full) ** 2
        resid += np.linalg.norm(full - cut) ** 2
    assert report["relative_error"] == pytest.approx(np.sqrt(resid / total), rel=1e-4, abs=1e-6)
    if rank == 10:  # 4 + 4 + 2: the merged update's full rank, so the cut is lossless
        assert report["relative_error"] < 1e-5
    else:
        assert report["relative_error"] > 1e-3
    assert f"rank-cut relative error {report['relative_error']:.3e}" in result.output


def test_adapters_of_different_bases_are_refused(tiny, adapters, tmp_path):
    other = tmp_path / "lora_other"
    make_adapter(tiny["base"], other, seed=5)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/another-base"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    result = run_cli("lora", tmp_path / "out", adapters[0], other)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: adapters of different bases:") and "someone/another-base" in result.stderr
    assert not (tmp_path / "out").exists()


def test_adapter_shapes_checked_against_base(tiny, adapters, tmp_path):
    from tests.fixtures.models import make_llama

    wide = make_llama(tmp_path / "wide", hidden=48)
    result = run_cli("lora", tmp_path / "out", *adapters, "--base", wide)
    assert result.exit_code == 2 and "but base" in result.stderr and not (tmp_path / "out").exists()


def test_missing_adapter_path_and_pickle_only(tmp_path):
    result = run_cli("lora", tmp_path / "out", tmp_path / "nope")
    assert result.exit_code == 2 and "adapter path not found" in result.stderr
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"\x80")
    result = run_cli("lora", tmp_path / "out", pickled)
    assert result.exit_code == 2 and "never unpickled" in result.stderr


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_mergekit_methods_on_base_plus_lora_match_mergekit_itself(tiny, adapters, tmp_path, method):
    """mergekit's own methods keep mergekit's own LoRA path (a PEFT merge into its cache): a
    ``base+adapter`` recipe gives the same weights through ``mergekit-from yaml`` as through
    mergekit's ``run_merge``; only the pre-pass methods (FW) fold per tensor."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from tests.fixtures.models import load_model

    recipe = {
        "merge_method": method,
        "models": [{"model": f"{tiny['base']}+{a}", "parameters": {"weight": 0.5}} for a in adapters[:2]],
        "dtype": "float32",
    }
    if method == "task_arithmetic":
        recipe["base_model"] = str(tiny["base"])
    ours = merge(tmp_path, recipe)
    run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "mergekit"),
              MergeOptions(lora_merge_cache=str(tmp_path / "cache"), quiet=True))
    theirs = load_model(tmp_path / "mergekit")
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    assert any(not torch.equal(ours[n], load_model(tiny["base"])[n]) for n in theirs)  # the adapters did something


def test_an_adapter_retrained_in_place_is_merged_anew(tiny, tmp_path, monkeypatch):
    """mergekit caches base+adapter merged under a name made of the two paths (and keeps a loader per path for the
    process); the default cache of ``mergekit-from yaml`` is keyed by their weight files, so a retrained adapter is
    not merged from its old copy, in a new process or in the same one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    adapter = make_adapter(tiny["base"], tmp_path / "adapter", seed=1)
    recipe = {"merge_method": "linear", "models": [{"model": f"{tiny['base']}+{adapter}", "parameters": {"weight": 1.0}}],
              "dtype": "float32"}
    first = merge(tmp_path, recipe, "first")
    make_adapter(tiny["base"], adapter, seed=2)  # same folder, new weights
    second = merge(tmp_path, recipe, "second")
    assert any(not torch.equal(first[n], second[n]) for n in first)
    make_adapter(tiny["base"], tmp_path / "same_weights", seed=2)
    assert all(torch.equal(second[n], t) for n, t in merge(tmp_path, {**recipe, "models": [
        {"model": f"{tiny['base']}+{tmp_path / 'same_weights'}", "parameters": {"weight": 1.0}}]}, "again").items())
