"""How well a model fits calibration data: mean response cross-entropy per task.

``auto`` reports it for the base and the merge, the demo shows auto's figures, and the
benchmarks probe the FW objective with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mergekit_from import calibration
from mergekit_from.calibration import Sample
from mergekit_from.prepass.objective import TaskBatches, load_skeleton

EVAL_MAX_LENGTH = 256
EVAL_BATCH_SIZE = 8


def model_losses(model: torch.nn.Module, tokenizer, samples: dict[str, Sequence[Sample]],
                 max_length: int = EVAL_MAX_LENGTH, batch_size: int = EVAL_BATCH_SIZE) -> dict[str, float]:
    """Mean per-sample response cross-entropy of ``model`` on each task's samples."""
    return {task: TaskBatches.of({task: items}, tokenizer, max_length, batch_size).objective(model, "cross_entropy")
            for task, items in samples.items()}


def calibration_losses(model_dir: Path, tasks: dict[str, Sequence[Sample]], tokenizer_dir: Path, limit: int = 100,
                       batch_size: int = EVAL_BATCH_SIZE) -> dict[str, float]:
    """Mean response cross-entropy per task of the model in ``model_dir`` on each task's first ``limit`` samples."""
    tokenizer = calibration.load_tokenizer(tokenizer_dir)
    model = load_skeleton(Path(model_dir))
    return model_losses(model, tokenizer, {t: s[:limit] for t, s in tasks.items()}, batch_size=batch_size)
