"""One LoRA view (zoo.adapter) for the lora tool, the scorer and the fingerprints; torch-free tensor reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergekit_from.lora import LoraAdapter
from zoo.adapter import LoraScaling, base_weight_name
from zoo.arrays import ArrayFolder
from zoo.fingerprint import Fingerprint, compare
from zoo.scoring import _LocalWeights

PEFT = "base_model.model."
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj")


def test_scale_honours_rslora_and_the_per_module_patterns():
    plain = LoraScaling({"r": 8, "lora_alpha": 16})
    assert plain.scale("x.q_proj") == 2.0
    assert LoraScaling({"r": 4, "lora_alpha": 8, "use_rslora": True}).scale("q_proj") == pytest.approx(8 / math.sqrt(4))
    patterned = LoraScaling({"r": 8, "lora_alpha": 16, "alpha_pattern": {"up_proj": 64},
                             "rank_pattern": {"up_proj": 4}})
    assert patterned.rank(PEFT + MODULES[1]) == 4 and patterned.rank(PEFT + MODULES[0]) == 8
    assert patterned.scale(PEFT + MODULES[1]) == 16.0 and patterned.scale(PEFT + MODULES[0]) == 2.0
    assert patterned.scale(PEFT + MODULES[1], rank=2) == 32.0  # the factors' own rank wins when read


def test_base_weight_names_drop_prefixes_until_the_base_has_one():
    assert base_weight_name(PEFT + MODULES[0], {MODULES[0] + ".weight"}) == MODULES[0] + ".weight"
    gpt2 = "h.0.attn.c_attn.weight"
    assert base_weight_name(PEFT + "transformer.h.0.attn.c_attn", {gpt2}) == gpt2
    assert base_weight_name(PEFT + MODULES[0], {"other.weight"}) is None


def test_fingerprints_find_an_adapters_modules_under_the_bases_own_prefix():
    """Behaviour change: the fingerprint check only stripped ``base_model.model.``; GPT-2 style bases
    saved without the ``transformer.`` prefix now match as the lora tool matches them."""
    base = Fingerprint.of([("h.0.attn.c_attn.weight", "F32", (48, 16))])
    adapter = Fingerprint.of([(PEFT + "transformer.h.0.attn.c_attn.lora_A.weight", "F32", (4, 16)),
                              (PEFT + "transformer.h.0.attn.c_attn.lora_B.weight", "F32", (48, 4))], "adapter")
    assert compare(base, adapter).compatible is True


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """A base and an rsLoRA adapter with an alpha_pattern, as ``DIR/<repo_id>/`` folders."""
    g = torch.Generator().manual_seed(0)
    base = {f"{m}.weight": torch.randn(24, 16, generator=g) for m in MODULES}
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    lora = {}
    for m in MODULES:
        lora[f"{PEFT}{m}.lora_A.weight"] = torch.randn(4, 16, generator=g)
        lora[f"{PEFT}{m}.lora_B.weight"] = torch.randn(24, 4, generator=g)
    (tmp_path / "lora").mkdir()
    save_file(lora, str(tmp_path / "lora" / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True, "alpha_pattern": {"up_proj": 32},
              "base_model_name_or_path": "base"}
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    return tmp_path


def test_the_scorer_reads_an_adapters_task_vector_as_the_lora_tool_does(folders):
    """Behaviour change: the scorer used lora_alpha / r for every module, ignoring rsLoRA and alpha_pattern."""
    scorer = _LocalWeights(folders, "base")
    tool = LoraAdapter.load(folders / "lora")
    for m in MODULES:
        expected = tool.delta(PEFT + m).numpy()
        assert scorer.delta("lora", f"{m}.weight") == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert tool.scale(PEFT + MODULES[1]) == 16.0  # 32 / sqrt(4)


def test_arrays_read_bfloat16_and_float16_exactly_as_torch_widens_them(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(7).to(torch.float16), "c": torch.randn(2, 2)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    folder = ArrayFolder.open(tmp_path)
    assert folder.shapes == {"a": (3, 5), "b": (7,), "c": (2, 2)}
    for name, t in tensors.items():
        assert (folder.array(name) == t.float().numpy()).all()
