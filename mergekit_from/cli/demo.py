"""``mergekit-from demo``: the offline end-to-end run, and its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mergekit_from.auto import DATA_METHODS, METHODS
from mergekit_from.cli.options import overwrite_option, parse_settings
from mergekit_from.demo import run_demo


def print_table(summary: dict[str, Any]) -> None:
    targets = summary["targets"]
    click.echo(f"\ntarget: {summary['target']}\n")
    click.echo(f"{'model':<28}" + "".join(f"{t:>10}" for t in targets) + f"{'mean':>10}")
    for label, acc in summary["accuracy"].items():
        vals = [acc[t] for t in targets]
        click.echo(f"{label:<28}" + "".join(f"{v:>10.3f}" for v in vals) + f"{sum(vals) / len(vals):>10.3f}")
    click.echo("\nFW pool and picks (share of iterations):")
    for repo, share in sorted(summary["fw_pick_share"].items(), key=lambda kv: -kv[1]):
        coef = summary["coefficients"]["FW"].get(repo, 0.0)
        click.echo(f"  {repo:<36} picks {share:.2f}  coefficient {coef:+.3f}")
    click.echo(f"\ndone in {summary['wall_s']:.0f}s")


@click.command("demo")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--quick", is_flag=True, help="Use the quick task zoo (seconds to build; for tests).")
@click.option("--zoo", "zoo_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Task zoo folder, built there when missing [default: the per-user cache].")
@click.option("--method", type=click.Choice(DATA_METHODS), default=METHODS[0], show_default=True)
@click.option("--pool-size", type=int, default=8, show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="FW setting over the recipe defaults; repeat.")
@overwrite_option
def demo_cmd(out: Path, quick: bool, zoo_dir: Path | None, method: str, pool_size: int,
             settings: tuple[str, ...], overwrite: bool) -> None:
    """Offline end to end: task zoo -> local Hub -> crawl -> auto (FroM, FW) -> evaluation table."""
    summary = run_demo(out, quick, method, parse_settings(settings), pool_size, zoo_dir, overwrite)
    print_table(summary)
