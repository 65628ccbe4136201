"""A tiny task zoo for the data-informed methods: char-level tokenizer, base, real experts.

Experts are the base fine-tuned for a few Adam steps on distinct synthetic string tasks, so a
target task's loss is genuinely lower for its own expert and the FW objective is meaningful.
Built once per test session (a few seconds) in a temporary folder.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, models, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergekit_from import calibration
from mergekit_from.prepass.objective import batch_loss

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = "abcdefghijklmnopqrstuvwxyz:>"
LETTERS = "abcdefgh"

TASKS = {
    "rev": lambda w: w[::-1],
    "shift": lambda w: "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in w),
    "sort": lambda w: "".join(sorted(w)),
    "first": lambda w: w[0] * len(w),
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Character level: a BPE with an alphabet and no merges splits text into characters."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def task_samples(task: str, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"{task}-{seed}")
    out = []
    for _ in range(n):
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
        out.append({"prompt": f"{task[0]}:{word}>", "response": TASKS[task](word)})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_base(path: Path, tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=layers, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fine_tune(base: Path, out: Path, task: str, tokenizer, steps: int = 40, lr: float = 3e-3) -> Path:
    model = LlamaForCausalLM.from_pretrained(base)
    model.train()
    enc = calibration.encode([calibration.Sample(**r) for r in task_samples(task, 128, seed=1)], tokenizer)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = random.Random(task)
    for _ in range(steps):
        batch = calibration.collate(rng.sample(enc, 16), tokenizer.pad_token_id)
        loss = batch_loss(model, batch, "cross_entropy") / 16
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@cache
def zoo() -> dict[str, Path]:
    """{"base", "expert_<task>", "data_<task>"} paths; built once per process."""
    root = Path(tempfile.mkdtemp(prefix="fw-zoo-"))
    atexit.register(shutil.rmtree, root, True)
    tok = make_tokenizer()
    paths = {"root": root, "base": make_base(root / "base", tok)}
    for task in TASKS:
        paths[f"expert_{task}"] = fine_tune(paths["base"], root / f"expert_{task}", task, tok)
        paths[f"data_{task}"] = write_jsonl(root / f"{task}.jsonl", task_samples(task, 24, seed=2))
    return paths


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def fw_recipe(method: str, pool: list[str], targets: list[str], **settings) -> dict:
    z = zoo()
    return {
        "merge_method": method,
        "base_model": str(z["base"]),
        "models": [{"model": str(z[f"expert_{t}"])} for t in pool],
        "dtype": "float32",
        method: {"targets": {t: str(z[f"data_{t}"]) for t in targets}, **settings},
    }
