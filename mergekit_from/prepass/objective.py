"""The causal-LM harness of the pre-passes: a model skeleton built from the base's config (never
remote code unless asked) and the two objectives, response cross-entropy and prompt entropy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from mergekit_from import calibration
from mergekit_from.calibration import IGNORE, Batch, Encoded, Sample
from mergekit_from.errors import ModelInputError, one_line
from mergekit_from.finite import checked
from mergekit_from.weights import TensorIndex


def load_skeleton(base_dir: Path, trust_remote_code: bool = False, role: str = "model") -> torch.nn.Module:
    """The architecture of the model in ``base_dir``, in fp32 with its weights, in eval mode.

    A non-finite weight is an error naming ``role`` (e.g. "base model"), the folder and the tensor.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
    except Exception as exc:  # an unknown architecture is a user problem, not a crash
        raise ModelInputError(f"cannot build a causal LM from {base_dir}/config.json: {one_line(exc)}") from None
    index = TensorIndex.open(base_dir)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, stored in stored_names(model, index).items():
            params[name].copy_(checked(index.tensor(stored), f"{role} {str(base_dir)!r}", stored))
    model.eval()
    return model


def stored_names(model: torch.nn.Module, index: TensorIndex) -> dict[str, str]:
    """Parameter name -> the name its tensor is stored under: the same, or without the model's
    ``base_model_prefix`` (GPT-2 checkpoints store ``h.0.…`` for ``transformer.h.0.…``)."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    names = {}
    for name, _ in model.named_parameters():
        stored = name if name in index.shapes else name.removeprefix(prefix)
        if stored in index.shapes:
            names[name] = stored
    return names


def merge_parameters(model: torch.nn.Module, index: TensorIndex) -> dict[str, torch.nn.Parameter]:
    """The model parameters that are stored tensors: these are what the pre-passes optimise."""
    return {name: p for name, p in model.named_parameters() if name in index.shapes}


def sample_losses(logits: torch.Tensor, batch: Batch, objective: str) -> torch.Tensor:
    """Per-sample loss [B]: mean CE over response tokens, or mean entropy of the predictions made
    at prompt tokens (the last one's included: for a prompt alone, that is the answer's first token)."""
    if objective == "cross_entropy":
        labels = batch.labels[:, 1:]
        tok = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        mask = (labels != IGNORE).float()
    elif objective == "entropy":
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = -(logp.exp() * logp).sum(-1)
        mask = batch.prompt_mask.float()
    else:  # guarded by the settings' Literal types
        raise ValueError(objective)
    return (tok * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def batch_loss(model: torch.nn.Module, batch: Batch, objective: str, params: dict | None = None) -> torch.Tensor:
    """Sum of per-sample losses of one batch (``params`` swaps in tensors via functional_call)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if params is None:
        logits = model(**inputs).logits
    else:
        logits = torch.func.functional_call(model, params, args=(), kwargs=inputs, strict=False).logits
    return sample_losses(logits, batch, objective).sum()


def task_objective(
    model: torch.nn.Module,
    tasks: Sequence[Sequence[Batch]],
    counts: Sequence[int],
    objective: str,
    backward: bool,
) -> float:
    """Mean over tasks of the mean per-sample loss; accumulates gradients when ``backward``."""
    total = 0.0
    for task_batches, n in zip(tasks, counts):
        for batch in task_batches:
            with torch.set_grad_enabled(backward):
                loss = batch_loss(model, batch, objective) / (n * len(tasks))
                if backward:
                    loss.backward()
            total += loss.item()
    return total


@dataclass
class TaskBatches:
    """Each task's tokenised samples and their padded batches, in task order."""

    encoded: dict[str, list[Encoded]]
    batches: list[list[Batch]]

    @classmethod
    def of(cls, samples: dict[str, Sequence[Sample]], tokenizer, max_length: int, batch_size: int) -> "TaskBatches":
        encoded = {t: calibration.encode(v, tokenizer, max_length) for t, v in samples.items()}
        pad = tokenizer.pad_token_id
        return cls(encoded, [list(calibration.batches(e, batch_size, pad)) for e in encoded.values()])

    @property
    def counts(self) -> list[int]:
        return [len(e) for e in self.encoded.values()]

    def objective(self, model: torch.nn.Module, objective: str, backward: bool = False) -> float:
        """:func:`task_objective` over every task."""
        return task_objective(model, self.batches, self.counts, objective, backward)
