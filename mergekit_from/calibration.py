"""Calibration data for data-informed merges (FW-Merging, RegMean): JSONL in, token batches out.

Each line of a task's file is one JSON object, either

- ``{"prompt": ..., "response": ...}``: the loss counts the response tokens only (and the
  end-of-sequence token after them when the tokenizer has one), or
- ``{"text": ...}``: the loss counts every token.

Files are read eagerly and strictly: a bad line is an error naming the file and the line,
never a silently skipped sample. Tokenisation uses the model's own ``AutoTokenizer``; remote
tokenizer code runs only when the user opts in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch

from mergekit_from.errors import CalibrationError, first_line

IGNORE = -100  # label value that the loss skips (prompt and padding positions)


class Sample(NamedTuple):
    """One calibration example; ``response`` is None for ``{"text"}`` lines (a pair compares
    equal to its ``(prompt, response)`` tuple)."""

    prompt: str
    response: str | None = None


def read_jsonl(path: str | os.PathLike, limit: int | None = None, pairs_only: bool = False) -> list[Sample]:
    """The first ``limit`` samples of a JSONL file (all when None); strict about every line read.

    ``pairs_only``: every sample must be a prompt/response pair (the task zoo's files)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    samples: list[Sample] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(samples) >= limit:
                break
            if not line.strip():
                continue
            samples.append(_parse_line(line, f"{path}:{lineno}"))
    if not samples:
        raise CalibrationError(f"{path}: no samples (the file has no JSON lines)")
    if pairs_only and any(s.response is None for s in samples):
        raise CalibrationError(f"{path}: task files need {{\"prompt\", \"response\"}} lines, not {{\"text\"}}")
    return samples


def _parse_line(line: str, where: str) -> Sample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{where}: malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise CalibrationError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj or "response" in obj:
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str):
                raise CalibrationError(f"{where}: key {key!r} is missing or not a string")
        if not obj["response"]:
            raise CalibrationError(f"{where}: empty 'response' (nothing to compute a loss on)")
        return Sample(obj["prompt"], obj["response"])
    if isinstance(obj.get("text"), str) and obj["text"]:
        return Sample(obj["text"])
    raise CalibrationError(f"{where}: expected keys 'prompt' and 'response', or a non-empty 'text'")


def sample_texts(samples: Iterable[Sample]) -> list[str]:
    """The prompts, responses and texts of calibration samples, in order: what the zoo's scorer reads."""
    return [t for sample in samples for t in (sample.prompt, sample.response) if t]


def load_tasks(files: dict[str, str | os.PathLike], limit: int | None) -> dict[str, list[Sample]]:
    """``{task: samples}`` for ``{task: jsonl file}``; every task must have samples."""
    if not files:
        raise CalibrationError("no calibration tasks given")
    return {task: read_jsonl(path, limit) for task, path in files.items()}


def load_tokenizer(model_dir: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer stored with a model (the base, for merges)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError for missing or odd files
        raise CalibrationError(f"cannot load a tokenizer from {model_dir}: {first_line(exc)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token_id is None:
        raise CalibrationError(f"the tokenizer in {model_dir} has no pad, eos or unk token to pad with")
    return tok


@dataclass(frozen=True)
class Encoded:
    """One tokenised sample: ``labels`` is IGNORE where the loss does not look."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int  # tokens of the prompt (all tokens for text samples)


def encode(samples: Sequence[Sample], tokenizer, max_length: int | None = 256) -> list[Encoded]:
    """Tokenise prompt and response separately so the response mask is exact, then truncate
    (``max_length`` None: never)."""
    out = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for s in samples:
        prompt = tokenizer(s.prompt, add_special_tokens=True)["input_ids"]
        if s.response is None:
            ids, labels = prompt, list(prompt)
        else:
            resp = tokenizer(s.response, add_special_tokens=False)["input_ids"] + eos
            ids = prompt + resp
            labels = [IGNORE] * len(prompt) + resp
        cut = len(ids) if max_length is None else max_length
        out.append(Encoded(ids[:cut], labels[:cut], min(len(prompt), cut)))
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 on real tokens
    labels: torch.Tensor  # [B, L], IGNORE on prompt and padding
    prompt_mask: torch.Tensor  # [B, L], 1 on prompt tokens (what entropy objectives look at)


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    prompt = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
        prompt[i, : e.prompt_len] = 1
    return Batch(ids, mask, labels, prompt)


def batches(items: Sequence[Encoded], batch_size: int, pad_id: int) -> Iterator[Batch]:
    for start in range(0, len(items), batch_size):
        yield collate(items[start : start + batch_size], pad_id)
