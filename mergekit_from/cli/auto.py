"""``mergekit-from auto``: the best pool of a base's fine-tunes for a target, crawled, scored and merged."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_from.auto import METHODS, AutoRequest, run_auto
from mergekit_from.cli.options import overwrite_option, parse_settings


@click.command("auto")
@click.option("--base", required=True, help="Base model repo id on the Hub.")
@click.option("--target", required=True, help="What the merge is for, in words.")
@click.option("--calib", multiple=True, metavar="[TASK=]FILE",
              help='Calibration JSONL per target task ({"prompt","response"} lines); TASK defaults to the file stem.')
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
@click.option("--db", "db_url", default=None, help="Zoo store URL (default: the per-user SQLite store).")
@click.option("--pool-size", type=int, default=8, show_default=True, help="Top-K compatible candidates to merge.")
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help="fw_soft/fw_hard need --calib; from is data-free (with --calib its pool is chosen by the "
                   "probes' evidence too; without, by the cards' text and the tree).")
@click.option("--max-probe", type=int, default=None, metavar="N",
              help="Probe at most N compatible candidates (the cards' best first) against the target's gradient "
                   "(default: all).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Method setting (e.g. max_iters=5, lmo=tensor, k=4); repeat.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face cache for the downloads (default: the standard cache).")
@click.option("--refresh", is_flag=True, help="Crawl again even if the store has a fresh crawl.")
@click.option("--allow-pickle", is_flag=True, help="Also download pickled weights (.bin/.pt). Unsafe.")
@click.option("--push-to-hub", default=None, metavar="REPO", help="Upload the result (needs HF_TOKEN).")
@click.option("--quiet", is_flag=True)
@overwrite_option
def auto_cmd(base, target, calib, out, endpoint, db_url, pool_size, method, max_probe, settings, cache_dir, refresh,
             allow_pickle, push_to_hub, quiet, overwrite) -> None:
    """Crawl, score, shortlist, download and merge the best pool of BASE's fine-tunes for TARGET."""
    req = AutoRequest(base=base, target=target, out=out, calib=calib, endpoint=endpoint, db_url=db_url,
                      pool_size=pool_size, method=method, settings=parse_settings(settings), push_to_hub=push_to_hub,
                      allow_pickle=allow_pickle, refresh=refresh, cache_dir=cache_dir, quiet=quiet,
                      overwrite=overwrite, max_probe=max_probe)
    result = run_auto(req)
    click.echo(f"merged {len(result.pool)} candidates with {method} into {result.out} in {result.seconds:.0f}s "
               f"(run {result.run_id})")
    for m in result.pool:
        share = result.pick_share.get(m.repo_id)
        click.echo(f"  {m.repo_id:<40} score {m.score:.3f}  coefficient {result.coefficients.get(m.repo_id, 0):+.4f}"
                   + (f"  picks {share:.2f}" if share is not None else ""))
    if result.evaluation:
        for label, row in result.evaluation.items():
            click.echo(f"  loss {label:<7} " + "  ".join(f"{t} {v:.3f}" for t, v in row.items()))
    if result.pushed:
        click.echo(f"pushed: {result.pushed}")
