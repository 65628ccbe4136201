"""The distractors a blind-pool Hub is filled with: perturbed copies and SVD LoRA adapters of experts."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from mergekit_from.taskzoo.hub import anonymous_id, perturbed_copy, svd_adapter


def test_anonymous_ids_are_stable_digits():
    rid = anonymous_id("fft-ends", "taskzoo")
    assert rid == anonymous_id("fft-ends", "taskzoo") != anonymous_id("fft-ends", "taskzoo", attempt=1)
    org, name = rid.split("/")
    assert org[0] == "u" and org[1:].isdigit() and name.startswith("model-") and name[6:].isdigit()


def test_svd_adapter_is_peft_shaped_and_folds_to_the_task_vector(quick_taskzoo, tmp_path):
    zoo, task = quick_taskzoo, quick_taskzoo.targets[0]
    theta, theta0 = load_file(zoo.expert(task) / "model.safetensors"), load_file(zoo.base / "model.safetensors")
    full = max(min(t.shape) for t in theta.values() if t.ndim == 2)  # every target module at full rank
    svd_adapter(zoo.expert(task), zoo.base, tmp_path / "a", full, base_id="me/base")
    factors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    # the same tensor names and config as the zoo's own adapter, which peft wrote
    peft_made = load_file(zoo.expert(task, "lora") / "adapter_model.safetensors")
    assert set(factors) == set(peft_made)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "me/base" and config["r"] == config["lora_alpha"] == full
    # at full rank B @ A is the task vector; at rank 1 it is its best rank-1 approximation
    name = "model.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model." + name.removesuffix(".weight")
    delta = theta[name] - theta0[name]
    folded = factors[f"{prefix}.lora_B.weight"] @ factors[f"{prefix}.lora_A.weight"]
    assert torch.linalg.matrix_norm(folded - delta) < 1e-4 * torch.linalg.matrix_norm(delta)
    svd_adapter(zoo.expert(task), zoo.base, tmp_path / "r1", 1, base_id="me/base")
    r1 = load_file(tmp_path / "r1" / "adapter_model.safetensors")
    s = torch.linalg.svdvals(delta)
    err = torch.linalg.matrix_norm(r1[f"{prefix}.lora_B.weight"] @ r1[f"{prefix}.lora_A.weight"] - delta)
    torch.testing.assert_close(err, s[1:].norm(), rtol=1e-3, atol=0.0)


def test_perturbed_copy_is_seeded_and_small(quick_taskzoo, tmp_path):
    zoo, task = quick_taskzoo, quick_taskzoo.tasks[-1]
    for folder, seed in (("a", 1), ("b", 1), ("c", 2)):
        perturbed_copy(zoo.expert(task), zoo.base, tmp_path / folder, 0.1, seed)
    a, b, c = (load_file(tmp_path / f / "model.safetensors") for f in "abc")
    theta, theta0 = load_file(zoo.expert(task) / "model.safetensors"), load_file(zoo.base / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
    rms = (theta[name] - theta0[name]).pow(2).mean().sqrt()
    noise = (a[name] - theta[name]).pow(2).mean().sqrt()
    assert 0.08 * rms < noise < 0.12 * rms
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not (tmp_path / "a" / "README.md").exists() and not (tmp_path / "a" / "zoo_entry.json").exists()
