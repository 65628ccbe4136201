"""Pretraining and fine-tuning of the zoo's small Llama models (CPU, deterministic).

Loss is on the response and ``</s>`` only; prompts are context. Fine-tunes stop as soon as
greedy exact-match on a held-out probe (from the calibration split) reaches the target, which
keeps task vectors as small as the task allows: fine-tuning elicits, it does not re-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from mergekit_from import calibration
from mergekit_from.calibration import Sample
from mergekit_from.taskzoo.tokenizer import CharVocab


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int

    def config(self, vocab: CharVocab) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=vocab.size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            max_position_embeddings=64,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=vocab.bos_id,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
        )


@dataclass(frozen=True)
class TrainSchedule:
    steps: int
    lr: float
    batch_size: int
    warmup: int = 0
    cosine: bool = True
    weight_decay: float = 0.0


def new_model(shape: ModelShape, vocab: CharVocab, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(shape.config(vocab))


def encode_batch(pairs: list[tuple[str, str]], tokenizer) -> dict[str, torch.Tensor]:
    """Right-padded ``<s> prompt response </s>`` with labels on ``response </s>`` only (``tokenizer``: a
    :class:`CharVocab` or a Hugging Face tokenizer with a pad token)."""
    batch = calibration.collate(calibration.encode([Sample(p, r) for p, r in pairs], tokenizer, None),
                                tokenizer.pad_token_id)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}


def train(
    model: torch.nn.Module,
    data: Iterator[tuple[str, str]],
    tokenizer,
    schedule: TrainSchedule,
    *,
    desc: str,
    probe: Callable[[], float] | None = None,
    probe_every: int = 25,
    target: float = 1.0,
) -> dict[str, Any]:
    """AdamW with warmup and cosine decay; stops early once ``probe()`` reaches ``target``.

    ``tokenizer`` encodes the batches (see :func:`encode_batch`); they go to the model's device."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        if not schedule.cosine:
            return 1.0
        frac = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_ema, score, step = float("nan"), None, 0
    bar = tqdm(range(schedule.steps), desc=desc, leave=False, mininterval=1.0)
    for step in bar:
        batch = {k: v.to(device) for k, v in
                 encode_batch([next(data) for _ in range(schedule.batch_size)], tokenizer).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        if probe is not None and (step + 1) % probe_every == 0:
            model.eval()
            score = probe()
            model.train()
            bar.set_postfix(loss=f"{loss_ema:.3f}", probe=f"{score:.2f}", refresh=False)
            if score >= target:
                break
    bar.close()
    model.eval()
    log: dict[str, Any] = {"steps": step + 1, "loss": round(loss_ema, 4), "probe": score}
    if score is None:  # JSON has no NaN: say why there is no probe accuracy
        why = "trained for the full schedule" if probe is None else f"fewer than {probe_every} steps"
        log["probe_note"] = f"no probe: {why}"
    return log
