"""Builds a folder of tiny Hugging Face model folders: a Llama base, same-shape fine-tunes with
task cards, a LoRA adapter, a second-level fine-tune, another vocabulary, another depth, a
quantized copy and a gated one. Weights are real (``save_pretrained`` with safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

BASE = "acme/tiny-llama"

# repo id -> (card fields, how the weights differ from the base)
FINETUNES = {
    "acme/tiny-llama-math": dict(tags=["math", "arithmetic"], datasets=["openai/gsm8k"],
                                 text="Fine-tuned to solve grade school math word problems step by step."),
    "acme/tiny-llama-algebra": dict(tags=["math", "algebra"], datasets=["hendrycks/competition_math"],
                                    text="Solves algebra equations and math competition problems."),
    "acme/tiny-llama-code": dict(tags=["code", "python"], datasets=["openai/humaneval"],
                                 text="Writes Python functions from docstrings."),
    "acme/tiny-llama-chat": dict(tags=["chat", "conversational"], datasets=["HuggingFaceH4/ultrachat_200k"],
                                 text="A friendly general chat assistant."),
    "other/tiny-llama-french": dict(tags=["translation", "french"], datasets=["wmt14"],
                                    text="Translates English sentences into French."),
    "other/tiny-llama-poems": dict(tags=["poetry", "creative-writing"], datasets=["poem_sentiment"],
                                   text="Writes short poems in the style of the romantic poets."),
}
SECOND_LEVEL = "acme/tiny-llama-math-v2"
ADAPTER = "acme/tiny-llama-math-lora"
OTHER_VOCAB = "acme/tiny-llama-bigvocab"
OTHER_DEPTH = "acme/tiny-llama-deep"
QUANTIZED = "acme/tiny-llama-q4"
GATED = "acme/tiny-llama-gated"


def _config(**over):
    from transformers import LlamaConfig

    kw = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    kw.update(over)
    return LlamaConfig(**kw)


def _card(path: Path, *, base: str | None, tags: list[str], datasets: list[str] = (), text: str = "",
          relation: str | None = None, license: str = "apache-2.0") -> None:
    lines = ["---", f"license: {license}", "library_name: transformers"]
    if base:
        lines.append(f"base_model: {base}")
    if relation:
        lines.append(f"base_model_relation: {relation}")
    if tags:
        lines += ["tags:"] + [f"- {t}" for t in tags]
    if datasets:
        lines += ["datasets:"] + [f"- {d}" for d in datasets]
    lines += ["---", "", f"# {path.parent.name}/{path.name}", "", text, ""]
    (path / "README.md").write_text("\n".join(lines))


def _save(model, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)


def _perturbed(base, seed: int, scale: float = 0.02):
    import copy

    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def build_zoo(root: str | Path) -> dict[str, str]:
    """Write the zoo under ``root``; returns {repo_id: expected relation to its parent or 'base'}."""
    from transformers import LlamaForCausalLM

    root = Path(root)
    torch.manual_seed(0)
    base = LlamaForCausalLM(_config())
    _save(base, root / BASE)
    _card(root / BASE, base=None, tags=["text-generation"], text="A tiny Llama base model for tests.")
    layout = {BASE: "base"}
    for i, (rid, card) in enumerate(FINETUNES.items()):
        _save(_perturbed(base, seed=i + 1), root / rid)
        _card(root / rid, base=BASE, tags=card["tags"], datasets=card["datasets"], text=card["text"])
        layout[rid] = "finetune"
    math = LlamaForCausalLM.from_pretrained(root / "acme/tiny-llama-math")
    _save(_perturbed(math, seed=50, scale=0.005), root / SECOND_LEVEL)  # a further tune of the math model
    _card(root / SECOND_LEVEL, base="acme/tiny-llama-math", tags=["math"], datasets=["openai/gsm8k"],
          text="Second round of math word problem tuning.")
    layout[SECOND_LEVEL] = "finetune"

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(_perturbed(base, seed=60), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    (root / ADAPTER).mkdir(parents=True, exist_ok=True)
    lora.save_pretrained(root / ADAPTER, safe_serialization=True)
    _card(root / ADAPTER, base=BASE, tags=["math", "lora"], datasets=["openai/gsm8k"],
          text="A LoRA adapter for math word problems.")
    layout[ADAPTER] = "adapter"

    _save(LlamaForCausalLM(_config(vocab_size=80)), root / OTHER_VOCAB)
    _card(root / OTHER_VOCAB, base=BASE, tags=["math"], text="Math tuned with an extended tokenizer.")
    layout[OTHER_VOCAB] = "finetune"
    _save(LlamaForCausalLM(_config(num_hidden_layers=3)), root / OTHER_DEPTH)
    _card(root / OTHER_DEPTH, base=BASE, tags=["math"], text="Math tuned with an extra layer.")
    layout[OTHER_DEPTH] = "finetune"

    q = _perturbed(base, seed=70)
    _save(q, root / QUANTIZED)
    _card(root / QUANTIZED, base=BASE, tags=["math", "4-bit"], relation="quantized", text="A 4-bit quantized copy.")
    layout[QUANTIZED] = "quantized"
    _save(_perturbed(base, seed=80), root / GATED)
    _card(root / GATED, base=BASE, tags=["math"], text="A gated math model.")
    layout[GATED] = "finetune"
    return layout
