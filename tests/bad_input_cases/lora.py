"""`mergekit-from lora`: adapters and options it must refuse before it writes anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.bad_input_cases import Case, Run


# The tiny fixture's Llama: hidden 32, 4 heads of 8, intermediate 48.
SHAPES = {"self_attn.q_proj": (32, 32), "self_attn.v_proj": (32, 32), "mlp.up_proj": (48, 32)}


def make_adapter(path: Path, base: Path, seed: int, r: int = 4, base_name: str | None = None) -> Path:
    """A PEFT LoRA adapter folder written directly (config + safetensors): random A and B factors."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for module, (out, inp) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = 0.05 * torch.randn(r, inp, generator=g)
            tensors[f"{prefix}.lora_B.weight"] = 0.05 * torch.randn(out, r, generator=g)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "base_model_name_or_path": base_name or str(base), "r": r, "lora_alpha": 2 * r,
              "target_modules": ["q_proj", "v_proj", "up_proj"], "bias": "none", "task_type": "CAUSAL_LM"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def lora_run(env, *extra: str, adapters: list[Path] | None = None, culprit: str | None = None) -> Run:
    """``lora OUT A B [extra]`` with two distinct adapters unless given; OUT and inputs must stay as they were."""
    if adapters is None:
        adapters = [make_adapter(env.tmp / "lora_a", env.tiny["base"], 1),
                    make_adapter(env.tmp / "lora_b", env.tiny["base"], 2)]
    out = env.tmp / "out"
    return Run(["lora", str(out), *map(str, adapters), *extra], protect=[out, *adapters], culprit=culprit)


def _copy(env) -> Run:
    a = make_adapter(env.tmp / "lora_a", env.tiny["base"], 1)
    shutil.copytree(a, env.tmp / "lora_copy")
    return lora_run(env, adapters=[a, env.tmp / "lora_copy"], culprit=str(env.tmp / "lora_copy"))


def _twice(env) -> Run:
    a = make_adapter(env.tmp / "lora_a", env.tiny["base"], 1)
    return lora_run(env, adapters=[a, a], culprit=str(a))


def _other_base(env) -> Run:
    a = make_adapter(env.tmp / "lora_a", env.tiny["base"], 1)
    b = make_adapter(env.tmp / "lora_b", env.tiny["base"], 2, base_name="someone/another-base")
    return lora_run(env, adapters=[a, b], culprit="someone/another-base")


def _pickled(env) -> Run:
    folder = env.tmp / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"\x80")
    return lora_run(env, adapters=[folder], culprit=str(folder))


def _model_folder(env) -> Run:
    a = make_adapter(env.tmp / "lora_a", env.tiny["base"], 1)
    return lora_run(env, adapters=[a, env.tiny["a"]], culprit=str(env.tiny["a"]))


def _wide_base(env) -> Run:
    from tests.fixtures.models import make_llama

    wide = make_llama(env.tmp / "wide", hidden=48)
    return lora_run(env, "--base", str(wide), culprit=str(wide))


def _fw_adapter(env, **config: object) -> Run:
    """fw_hard on the FW experts' base with ``base+adapter`` as a pool member; the adapter was made
    for the tiny fixture, whose MLP is narrower (up_proj 48 x 32, the experts' 64 x 32)."""
    from tests.bad_input_cases.recipe import yaml_run
    from tests.fixtures.fw_experts import experts, fw_recipe

    adapter = make_adapter(env.tmp / "lora_a", experts()["base"], 1)
    if config:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    recipe = fw_recipe("fw_hard", ["shift"], ["reverse"], max_iters=1)
    recipe["models"].append({"model": f"{experts()['base']}+{adapter}"})
    return yaml_run(env, recipe, culprit=str(adapter))


CASES = [
    Case("fw-adapter-shape-mismatch", "mergekit-from yaml fw.yml OUT  # pool member BASE+ADAPTER of a narrower model",
         "but", _fw_adapter, fixtures=()),
    Case("fw-adapter-dora", "mergekit-from yaml fw.yml OUT  # pool member BASE+ADAPTER, a DoRA adapter",
         "unsupported adapter features: DoRA", lambda env: _fw_adapter(env, use_dora=True), fixtures=()),
    Case("lora-rank-zero", "mergekit-from lora OUT A B --rank 0", "rank must be between 1 and 8",
         lambda env: lora_run(env, "--rank", "0", culprit="got 0")),
    Case("lora-rank-negative", "mergekit-from lora OUT A B --rank -1", "rank must be between 1 and 8",
         lambda env: lora_run(env, "--rank", "-1", culprit="got -1")),
    Case("lora-rank-above-full", "mergekit-from lora OUT A B --rank 999  # two rank-4 adapters: full rank 8",
         "the merged update's full rank", lambda env: lora_run(env, "--rank", "999", culprit="got 999")),
    Case("lora-rank-one-above-full", "mergekit-from lora OUT A B --rank 9  # two rank-4 adapters: full rank 8",
         "the merged update's full rank", lambda env: lora_run(env, "--rank", "9", culprit="got 9")),
    Case("lora-adapter-twice", "mergekit-from lora OUT A A", "is given twice", _twice),
    Case("lora-adapter-copy", "mergekit-from lora OUT A COPY_OF_A", "hold identical weights", _copy),
    Case("lora-not-an-adapter", "mergekit-from lora OUT A MODEL_DIR  # a model folder, not an adapter",
         "not a PEFT adapter folder", _model_folder),
    Case("lora-missing-adapter", "mergekit-from lora OUT nowhere", "adapter path not found",
         lambda env: lora_run(env, adapters=[env.tmp / "nowhere"], culprit="nowhere")),
    Case("lora-pickled-adapter", "mergekit-from lora OUT PICKLED  # only adapter_model.bin",
         "never unpickled", _pickled),
    Case("lora-different-bases", "mergekit-from lora OUT A B  # B records another base",
         "adapters of different bases", _other_base),
    Case("lora-base-shape-mismatch", "mergekit-from lora OUT A B --base WIDER_MODEL", "but base", _wide_base),
    Case("lora-weight-count", "mergekit-from lora OUT A B --weight 1", "1 weights given for 2 adapters",
         lambda env: lora_run(env, "--weight", "1", culprit="2 adapters")),
    Case("lora-negative-weight", "mergekit-from lora OUT A B --weight 1 --weight -1", "--weight values must be >= 0",
         lambda env: lora_run(env, "--weight", "1", "--weight", "-1", culprit="--weight")),
    Case("lora-lambda-zero", "mergekit-from lora OUT A B --lambda 0", "--lambda must be > 0",
         lambda env: lora_run(env, "--lambda", "0", culprit="got 0")),
    Case("lora-negative-k", "mergekit-from lora OUT A B --k -1", "k must be a finite number >= 0",
         lambda env: lora_run(env, "--k", "-1", culprit="got -1")),
]
