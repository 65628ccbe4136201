"""Exact-match evaluation of any causal-LM folder on the zoo's tasks (greedy, batched).

A prediction is the greedy continuation of ``<s> + prompt`` up to ``</s>``; it counts only if it
equals the response exactly (right length, then ``</s>``). Decoding runs at most
``len(response) + 1`` tokens, prompts are sorted by length and left-padded, and everything is
fp32 on CPU, so the numbers are deterministic run to run.

Folders written by mergekit may lack a tokenizer (``--tokenizer DIR`` supplies one), and a PEFT
adapter folder is evaluated on top of its base (``--base DIR``, or the zoo folder its
``base_model_name_or_path`` names in the zoo's manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mergekit_from.errors import ModelInputError
from mergekit_from.taskzoo.tasks import examples
from mergekit_from.weights import refuse_pickles

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def has_tokenizer(model_dir: Path) -> bool:
    return all((Path(model_dir) / f).is_file() for f in TOKENIZER_FILES)


def _resolve_adapter_base(adapter_dir: Path, base: Path | None) -> Path:
    if base is not None:
        return base
    ref = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if Path(ref).is_dir():
        return Path(ref)
    from mergekit_from.taskzoo.manifest import find_in_zoo  # the zoo resolves its own repo ids

    found = find_in_zoo(adapter_dir.parent, ref)
    if found is None:
        raise ModelInputError(f"{adapter_dir}: adapter base {ref!r} not found; pass --base DIR")
    return found


def load_model(model_dir: str | Path, tokenizer_dir: str | Path | None = None, base_dir: str | Path | None = None,
               allow_pickle: bool = False):
    """(model, tokenizer) for a model folder or a PEFT adapter folder, in eval mode, fp32; pickled
    weights (no safetensors) are refused unless ``allow_pickle``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelInputError(f"model folder not found: {model_dir}")
    is_adapter = (model_dir / "adapter_config.json").is_file()
    weights_dir = _resolve_adapter_base(model_dir, Path(base_dir) if base_dir else None) if is_adapter else model_dir
    if not (weights_dir / "config.json").is_file():
        raise ModelInputError(f"{weights_dir}: no config.json (not a model folder)")
    if not allow_pickle:
        for folder in dict.fromkeys((weights_dir, model_dir)):
            refuse_pickles(folder)
    candidates = [Path(tokenizer_dir)] if tokenizer_dir else []
    candidates += [model_dir, weights_dir]
    tok_dir = next((d for d in candidates if has_tokenizer(d)), None)
    if tok_dir is None:
        raise ModelInputError(f"{model_dir}: no tokenizer in the folder; pass --tokenizer DIR (e.g. the zoo's base)")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=torch.float32)
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    model.eval()
    return model, tokenizer


@torch.inference_mode()
def predict(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, cut at ``</s>``), in input order."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: list[str] = [""] * len(prompts)
    eos = tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )[:, enc["input_ids"].shape[1] :]
        for i, row in zip(idx, gen.tolist()):
            if eos in row:
                row = row[: row.index(eos)]
            out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


def accuracy(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> float:
    """Fraction of (prompt, response) pairs whose greedy continuation is exactly the response."""
    if not pairs:
        return float("nan")
    max_new = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in pairs) + 1
    preds = predict(model, tokenizer, [p for p, _ in pairs], max_new, batch_size)
    return sum(p == r for p, (_, r) in zip(preds, pairs)) / len(pairs)


# (task, n, tokenizer, seed) -> the first n test (prompt, answer) pairs, as a zoo asks its questions
TestPairs = Callable[[str, int, Any, int], list[tuple[str, str]]]


def toy_pairs(task: str, n: int, tokenizer: Any, seed: int = 0) -> list[tuple[str, str]]:
    """The task zoo's test questions: its own prompts, whatever the tokenizer."""
    return examples(task, "test", n, seed=seed)


def evaluate_loaded(model, tokenizer, tasks: Sequence[str], n: int = 200, seed: int = 0,
                    pairs: TestPairs = toy_pairs) -> dict[str, float]:
    return {t: accuracy(model, tokenizer, pairs(t, n, tokenizer, seed)) for t in tasks}


def evaluate(
    model_dir: str | Path,
    tasks: Sequence[str],
    n: int = 200,
    *,
    tokenizer_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
    pairs: TestPairs = toy_pairs,
) -> dict[str, float]:
    """Exact-match accuracy per task on the first ``n`` test examples of each task."""
    model, tokenizer = load_model(model_dir, tokenizer_dir, base_dir, allow_pickle)
    return evaluate_loaded(model, tokenizer, tasks, n, seed, pairs)
