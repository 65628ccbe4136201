"""``mergekit-from taskzoo build`` and ``mergekit-from eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mergekit_from.cli.options import allow_pickle_option, overwrite_option
from mergekit_from.errors import ConfigError, ModelInputError


@click.group("taskzoo")
def taskzoo_cmd() -> None:
    """The task zoo: a small pretrained base, experts fine-tuned from it, and their data."""


@taskzoo_cmd.command("build")
@click.option("--out", default=None,
              help="Zoo folder (default $MERGEKIT_FROM_TASKZOO or ~/.cache/mergekit-from/taskzoo[-quick]).")
@click.option("--quick", is_flag=True, help="The tiny zoo the tests use (builds in seconds).")
@click.option("--force", is_flag=True, help="Rebuild even if a zoo is already there.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch threads (default $MERGEKIT_FROM_THREADS or every core).")
@overwrite_option
def build_cmd(out: str | None, quick: bool, force: bool, threads: int | None, overwrite: bool) -> None:
    """Build the zoo (or reuse the complete one already there) and print its folder."""
    from mergekit_from.taskzoo.build import build_zoo

    zoo = build_zoo(out, quick=quick, force=force, threads=threads, overwrite=overwrite)
    click.echo(f"{zoo.root}  ({len(zoo.manifest['models'])} models, {len(zoo.tasks)} tasks, "
               f"built in {zoo.manifest['build_seconds']} s)")


@click.command("eval")
@click.argument("model_dir")
@click.option("--tasks", required=True, help="Comma-separated task names of the task zoo (reverse,sort) or the real zoo "
                   "(add,iso_date).")
@click.option("--n", type=click.IntRange(1), default=200, show_default=True, help="Test examples per task.")
@click.option("--tokenizer", "tokenizer_dir", default=None,
              help="Tokenizer folder for models saved without one (e.g. the zoo's models/taskzoo/base).")
@click.option("--base", "base_dir", default=None, help="Base model folder when MODEL_DIR is a PEFT adapter.")
@allow_pickle_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(model_dir: str, tasks: str, n: int, tokenizer_dir: str | None, base_dir: str | None,
             allow_pickle: bool, as_json: bool) -> None:
    """Exact-match accuracy (greedy decoding) of MODEL_DIR on the test split of task-zoo or real-zoo tasks (real-zoo
    questions go through the tokenizer's chat template, as in training)."""
    import torch

    from mergekit_from.realzoo.evaluate import check_task, evaluate

    for what, folder in (("MODEL_DIR", model_dir), ("--tokenizer", tokenizer_dir), ("--base", base_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise ModelInputError(f"{what}: folder not found: {folder}")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks: give at least one task name")
    for name in names:
        check_task(name)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stdout/stderr to the results
    torch.set_num_threads(1)
    acc = evaluate(model_dir, names, n, tokenizer_dir=tokenizer_dir, base_dir=base_dir, allow_pickle=allow_pickle)
    mean = sum(acc.values()) / len(acc)
    if as_json:
        click.echo(json.dumps({"model": model_dir, "n": n, "accuracy": acc, "mean": mean}))
        return
    for name, value in acc.items():
        click.echo(f"{name:<10} {value:.3f}")
    click.echo(f"{'mean':<10} {mean:.3f}")
