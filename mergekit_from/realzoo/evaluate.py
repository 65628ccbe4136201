"""Exact-match evaluation on the tasks of either zoo (what ``mergekit-from eval`` and the quality benchmark run).

It lives here because the real zoo builds on the task zoo: a real-zoo question is asked through the model's chat
template, as training asked it; a task-zoo question is the task zoo's own prompt. Task names never clash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mergekit_from.errors import ConfigError
from mergekit_from.realzoo import tasks as real
from mergekit_from.taskzoo import tasks as toy
from mergekit_from.taskzoo.evaluate import evaluate as taskzoo_evaluate


def check_task(name: str) -> None:
    """A task name of the task zoo or the real zoo, or a ConfigError naming both lists."""
    if name not in toy.TASKS and name not in real.TASKS:
        raise ConfigError(f"unknown task {name!r} (task zoo: {', '.join(toy.TASKS)}; real zoo: "
                          f"{', '.join(real.TASKS)})")


def test_pairs(task: str, n: int, tokenizer: Any, seed: int = 0) -> list[tuple[str, str]]:
    """The first ``n`` test (prompt, answer) pairs of ``task``, whichever zoo it is from."""
    if task in real.TASKS:
        return real.chat_examples(tokenizer, real.examples(task, "test", n, seed=seed))
    return toy.examples(task, "test", n, seed=seed)


def evaluate(model_dir: str | Path, tasks: Sequence[str], n: int = 200, **kw: Any) -> dict[str, float]:
    """The task zoo's :func:`~mergekit_from.taskzoo.evaluate.evaluate`, each question asked as its zoo asks it."""
    return taskzoo_evaluate(model_dir, tasks, n, pairs=test_pairs, **kw)
