"""``mergekit-from lora``: PEFT LoRA adapters of one base merged with FroM into one adapter."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_from.cli.options import overwrite_option
from mergekit_from.errors import ConfigError
from mergekit_from.lora import LoraAdapter, check_adapters, merge_adapters, write_adapter
from mergekit_from.methods.from_merge import DEFAULT_K
from mergekit_from.output import Output


@click.command("lora")
@click.argument("out_path", type=click.Path(path_type=Path))
@click.argument("adapters", nargs=-1, required=True)
@click.option("--base", "base", default=None, help="Base model folder: check every module's shape against it.")
@click.option("--k", "k", type=float, default=DEFAULT_K, show_default=True, help="FroM exponent of ||Delta||_F.")
@click.option("--lambda", "scale", type=float, default=1.0, show_default=True, help="Scale of the merged update.")
@click.option("--weight", "weights", type=float, multiple=True, help="Prior weight per adapter, in order (repeat).")
@click.option("--rank", type=int, default=None,
              help="Rank of the output adapter, 1 to the merged update's full rank (input ranks summed, capped by "
                   "each module's shape) [default: largest input rank].")
@overwrite_option
def lora_cmd(out_path: Path, adapters: tuple[str, ...], base, k, scale, weights, rank, overwrite) -> None:
    """Merge PEFT LoRA ADAPTERS of one base with FroM into one adapter at OUT_PATH.

    Each module's update scale*B@A is merged with FroM, then cut to --rank by truncated SVD;
    the written adapter loads with peft.PeftModel.from_pretrained.
    """
    if scale <= 0:
        raise ConfigError(f"--lambda must be > 0, got {scale}")
    if any(w < 0 for w in weights):
        raise ConfigError("--weight values must be >= 0")
    output = Output.check(out_path, "lora", [*adapters, *([base] if base else [])], overwrite)
    loaded = [LoraAdapter.load(p) for p in adapters]
    check_adapters(loaded, base)
    factors, report = merge_adapters(loaded, k=k, scale=scale, priors=list(weights) or None, rank=rank)
    params = {"k": k, "lambda": scale, "weights": list(weights) or None, "rank": report.rank}
    with output.staged() as tmp:
        write_adapter(tmp, factors, loaded[0], report.rank, loaded, report, params)
    click.echo(
        f"wrote {out_path}: {len(factors)} modules at rank {report.rank}; rank-cut relative error "
        f"{report.relative_error:.3e} overall, {report.max_module_relative_error:.3e} worst module"
    )
