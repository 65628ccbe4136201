"""``mergekit-from demo``: the offline end-to-end run, and its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mergekit_from.auto import DATA_METHODS, METHODS, probe_line
from mergekit_from.cli.options import overwrite_option, parse_settings
from mergekit_from.demo import run_demo


def print_table(summary: dict[str, Any]) -> None:
    targets = summary["targets"]
    click.echo(f"\ntarget: {summary['target']}\n")
    click.echo(f"{'model':<28}" + "".join(f"{t:>10}" for t in targets) + f"{'mean':>10}")
    for label, acc in summary["accuracy"].items():
        vals = [acc[t] for t in targets]
        click.echo(f"{label:<28}" + "".join(f"{v:>10.3f}" for v in vals) + f"{sum(vals) / len(vals):>10.3f}")
    print_probes(summary)
    print_pool(summary)
    click.echo(f"\ndone in {summary['wall_s']:.0f}s")


def print_probes(summary: dict[str, Any]) -> None:
    """What each `auto` run read of the candidates before downloading, as its probes counted it."""
    click.echo(f"\nread before download ({summary['candidates']} candidates served besides the base):")
    for label, probes in summary["probes"].items():
        click.echo(f"  auto ({label}): {probe_line(probes) if probes else 'no probes (no --calib)'}")


def print_pool(summary: dict[str, Any]) -> None:
    """The FW pool with each member's hidden truth: did the card-blind choice find the targets' experts?"""
    truth, fw = summary["truth"], summary["coefficients"]["FW"]
    mode = "blind: ids and cards hide the task" if summary["blind"] else "labelled"
    click.echo(f"\nFW pool ({mode}); true task from the demo's hidden record:")
    click.echo(f"  {'repo':<28}{'true model':<22}{'task':<10}{'score':>7}{'picks':>7}{'coef':>8}")
    for repo, share in sorted(summary["fw_pick_share"].items(), key=lambda kv: -kv[1]):
        t = truth.get(repo, {})
        mark = " target" if t.get("task") in summary["targets"] and t.get("kind") in ("fft", "lora") else ""
        click.echo(f"  {repo:<28}{t.get('model', '?'):<22}{t.get('task') or '-':<10}"
                   f"{summary['scores']['FW'].get(repo, 0.0):>7.3f}{share:>7.2f}{fw.get(repo, 0.0):>+8.3f}{mark}")
    found = [t for t in summary["targets"]
             if any(truth.get(r, {}).get("task") == t and truth[r].get("kind") in ("fft", "lora") for r in fw)]
    click.echo(f"  targets with their expert (full or LoRA) in the pool: {len(found)} of {len(summary['targets'])}"
               f" ({', '.join(found) or 'none'})")


@click.command("demo")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--quick", is_flag=True, help="Use the quick task zoo (seconds to build; for tests).")
@click.option("--zoo", "zoo_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Task zoo folder, built there when missing [default: the per-user cache].")
@click.option("--method", type=click.Choice(DATA_METHODS), default=METHODS[0], show_default=True)
@click.option("--pool-size", type=int, default=8, show_default=True)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="FW setting over the recipe defaults; repeat.")
@click.option("--labelled", is_flag=True,
              help="Serve the zoo under its own repo ids and cards (default: blind, neutral ids and cards).")
@overwrite_option
def demo_cmd(out: Path, quick: bool, zoo_dir: Path | None, method: str, pool_size: int,
             settings: tuple[str, ...], labelled: bool, overwrite: bool) -> None:
    """Offline end to end: task zoo -> local Hub -> crawl -> auto (FroM, FW) -> evaluation table."""
    summary = run_demo(out, quick, method, parse_settings(settings), pool_size, zoo_dir, overwrite,
                       blind=not labelled)
    print_table(summary)
