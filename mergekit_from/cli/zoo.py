"""``mergekit-from zoo ...``: serve a folder as a Hub, crawl a Hub into the store, inspect and score."""

from __future__ import annotations

import csv
import gc
import json
import sys
from pathlib import Path
from typing import Any

import click

from db.kinds import RELATIONS
from mergekit_from.errors import ConfigError

DB_OPTION = click.option("--db", "db_url", default=None, metavar="URL",
                         help="SQLAlchemy URL of the store (default: SQLite in the per-user cache; "
                              "$MERGEKIT_FROM_ZOO_DB overrides).")


def _store(db_url: str | None):  # noqa: ANN202
    from db import open_store

    return open_store(db_url)


def _columns(row: Any) -> dict[str, Any]:
    """Every mapped column of a store row, by name."""
    return {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs}


@click.group("zoo")
def zoo() -> None:
    """A Hub model zoo: crawl a base's model tree, check compatibility, score candidates."""


@zoo.command("serve")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--page-size", default=1000, show_default=True, help="Models per listing page.")
@click.option("--gated", "gated", multiple=True, metavar="REPO_ID", help="Serve this repo as gated (repeatable).")
@click.option("--access-token", "access_tokens", multiple=True, envvar="ZOO_ACCESS_TOKENS",
              help="Bearer tokens that may read gated files and write (repeatable; also $ZOO_ACCESS_TOKENS).")
@click.option("--stats", type=click.Path(exists=True, dir_okay=False),
              help='JSON {"repo_id": {"downloads": n, "likes": n}} for the popularity fields.')
@click.option("--writable", is_flag=True,
              help="Accept create_repo and uploads from anyone (without it, only --access-token holders write).")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve_cmd(folder: str, port: int, page_size: int, gated: tuple[str, ...], access_tokens: tuple[str, ...],
              stats: str | None, writable: bool, verbose: bool) -> None:
    """Serve FOLDER (HF model folders as <org>/<name>/ or <name>/) over the Hub API on 127.0.0.1."""
    from zoo.hub_server import HubServer

    stats_map = {}
    if stats:
        try:
            stats_map = json.loads(Path(stats).read_text())
        except ValueError as exc:
            raise ConfigError(f"{stats}: not JSON ({exc})") from None
    try:
        hub = HubServer(folder, port, page_size=page_size, gated=dict.fromkeys(gated, "manual"), stats=stats_map,
                        access_tokens=set(access_tokens), writable=writable, verbose=verbose)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None
    click.echo(f"serving {len(hub.catalog.repos)} repos from {folder} at {hub.endpoint} (Ctrl-C stops)", err=True)
    # The scanned catalog and the imported modules (torch among them, through mergekit) live as
    # long as this process: frozen, they are no longer walked by every full garbage collection,
    # which otherwise stalls a listing request for ~0.2 s every ~20 pages of 1000.
    gc.freeze()
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub.httpd.server_close()


def _relations(value: str) -> tuple[str, ...]:
    rels = tuple(r.strip() for r in value.split(",") if r.strip())
    bad = [r for r in rels if r not in RELATIONS]
    if bad or not rels:
        raise ConfigError(f"--relations: unknown relation {bad[0] if bad else value!r}; "
                          f"expected a comma list of {', '.join(RELATIONS)}")
    return rels


@zoo.command("crawl")
@click.option("--base", help="Walk the model tree of this repo (base_model:<relation>:<id> listings).")
@click.option("--search", help="Or: a plain search (substring of the repo id).")
@click.option("--filter", "filters", multiple=True, help="Listing filter tags (with --search; repeatable).")
@click.option("--author", help="Listing author (with --search).")
@click.option("--endpoint", default=None, metavar="URL", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co).")
@DB_OPTION
@click.option("--max-models", type=click.IntRange(min=1), default=None, help="Stop listing after N models.")
@click.option("--relations", default=",".join(RELATIONS), show_default=True, help="Relations to follow.")
@click.option("--recursive", is_flag=True, help="Also walk the children's own children.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Concurrent enrichment requests.")
@click.option("--max-rps", type=float, default=None, help="Cap on requests per second (polite crawling).")
@click.option("--patience", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="MINUTES",
              help="How long one Hub request keeps retrying rate limits and server errors before the crawl stops "
                   "(a rerun resumes).")
@click.option("--no-enrich", is_flag=True, help="Listing metadata only (no model_info / headers).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="huggingface_hub cache for the small files read (default: $HF_HUB_CACHE).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def crawl_cmd(base: str | None, search: str | None, filters: tuple[str, ...], author: str | None,
              endpoint: str | None, db_url: str | None, max_models: int | None, relations: str, recursive: bool,
              workers: int, max_rps: float | None, patience: float, no_enrich: bool, cache_dir: str | None,
              quiet: bool) -> None:
    """Crawl a Hub into the store: resumable (kill it, run it again), incremental (unchanged sha skipped)."""
    from zoo.crawler import Crawler
    from zoo.resilience import RetryPolicy

    if not base and not (search or filters or author):
        raise ConfigError("crawl needs --base ID, or --search / --filter / --author")
    if base and (search or filters or author):
        raise ConfigError("crawl takes either --base (a model tree) or --search / --filter / --author, not both")
    rels = _relations(relations)
    store = _store(db_url)
    crawler = Crawler(store, endpoint, workers=workers, max_rps=max_rps, retry=RetryPolicy(patience_s=60 * patience),
                      cache_dir=cache_dir, progress=not quiet)
    if base:
        report = crawler.crawl_tree(base, relations=rels, recursive=recursive, max_models=max_models,
                                    enrich=not no_enrich)
    else:
        report = crawler.crawl_search(search=search, filters=list(filters) or None, author=author,
                                      max_models=max_models, enrich=not no_enrich)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())) or "none"
    click.echo(f"listed {report.listed} models in {report.pages} pages; enriched {report.enriched} "
               f"({statuses}); {report.skipped_unchanged} unchanged")


@zoo.command("ls")
@DB_OPTION
@click.option("--base", default=None, help="Check compatibility against this base (default: each model's parent).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def ls_cmd(db_url: str | None, base: str | None, as_json: bool) -> None:
    """List the models in the store."""
    from zoo.inventory import inventory

    for row in inventory(_store(db_url), base):
        if as_json:
            click.echo(json.dumps(row))
        else:
            ok = {True: "ok", False: "no", None: "?"}[row["compatible"]]
            click.echo(f"{row['repo_id']:<48} {(row['sha'] or '-')[:8]:<8} {row['relation'] or '-':<9} "
                       f"compat={ok:<2} {row['status']:<8} {'gated' if row['gated'] else ''}".rstrip())


@zoo.command("show")
@click.argument("repo_id")
@DB_OPTION
def show_cmd(repo_id: str, db_url: str | None) -> None:
    """Everything the store knows about REPO_ID, as JSON."""
    from sqlalchemy import select

    from db import AdapterConfig, Edge, Model, Score, TensorFingerprint, WeightFile

    store = _store(db_url)
    with store.session() as s:
        m = s.get(Model, repo_id)
        if m is None:
            raise ConfigError(f"{repo_id!r} is not in the store; crawl it first")
        out = _columns(m)
        out["parents"] = [{"id": e.parent_id, "relation": e.relation, "source": e.source}
                          for e in s.scalars(select(Edge).where(Edge.child_id == repo_id))]
        out["children"] = [{"id": e.child_id, "relation": e.relation, "source": e.source}
                           for e in s.scalars(select(Edge).where(Edge.parent_id == repo_id))]
        fp = s.get(TensorFingerprint, repo_id)
        out["fingerprint"] = None if fp is None else {
            "kind": fp.kind, "n_tensors": fp.n_tensors, "n_params": fp.n_params, "vocab_size": fp.vocab_size,
            "shape_hash": fp.shape_hash, "body_hash": fp.body_hash}
        out["weight_files"] = [{"filename": w.filename, "n_tensors": w.n_tensors, "params_by_dtype": w.params_by_dtype}
                               for w in s.scalars(select(WeightFile).where(WeightFile.repo_id == repo_id))]
        a = s.get(AdapterConfig, repo_id)
        out["adapter"] = None if a is None else {"peft_type": a.peft_type, "r": a.r, "lora_alpha": a.lora_alpha,
                                                 "target_modules": a.target_modules,
                                                 "base_model_name_or_path": a.base_model_name_or_path}
        out["scores"] = [{"target_id": sc.target_id, "score": sc.score, "compatible": sc.compatible}
                         for sc in s.scalars(select(Score).where(Score.repo_id == repo_id))]
    click.echo(json.dumps(out, indent=2, default=str))


def _run_row(run: Any) -> dict[str, Any]:
    """A stored auto run, flattened for listing and comparison."""
    details = run.details or {}
    ev = details.get("evaluation") or {}

    def mean_loss(which: str) -> float | None:
        vals = list((ev.get(which) or {}).values())
        return round(sum(vals) / len(vals), 4) if vals else None

    return {"run_id": run.run_id, "created_at": run.created_at.isoformat(timespec="seconds"), "status": run.status,
            "method": run.method, "base": run.inputs.get("base"), "target": run.inputs.get("target"),
            "pool": run.pool, "picked": [p["repo_id"] for p in run.picks or [] if p.get("coefficient")],
            "calib_loss_base": mean_loss("base"), "calib_loss_merged": mean_loss("merged"),
            "seconds": details.get("seconds"), "output": run.output, "error": details.get("error")}


@zoo.command("runs")
@click.argument("run_id", type=int, required=False)
@DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def runs_cmd(run_id: int | None, db_url: str | None, as_json: bool) -> None:
    """List the `auto` runs recorded in the store, newest first; with RUN_ID, that run in full as JSON."""
    from sqlalchemy import select

    from db import MergeRun

    store = _store(db_url)
    with store.session() as s:
        if run_id is not None:
            run = s.get(MergeRun, run_id)
            if run is None:
                raise ConfigError(f"no auto run {run_id} in the store (`mergekit-from zoo runs` lists them)")
            click.echo(json.dumps(_columns(run), indent=2, default=str))
            return
        rows = [_run_row(r) for r in s.scalars(select(MergeRun).order_by(MergeRun.run_id.desc()))]
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
            continue
        loss = ("-" if row["calib_loss_merged"] is None
                else f"{row['calib_loss_base']:.3f}->{row['calib_loss_merged']:.3f}")
        click.echo(f"{row['run_id']:>4} {row['created_at']} {row['method']:<8} {row['status']:<7} "
                   f"pool={len(row['pool']):<3} picked={len(row['picked']):<3} calib-loss={loss:<13} "
                   f"{row['output'] or row['error'] or ''}")


@zoo.command("score")
@click.option("--base", required=True, help="The target's base model.")
@click.option("--target", "description", required=True, help="Free-text description of the task.")
@click.option("--calib", type=click.Path(dir_okay=False), multiple=True,
              help='Calibration JSONL of {"prompt", "response"} (or {"text"}) lines; repeat for several targets.')
@click.option("--weights", "weights_dir", type=click.Path(exists=True, file_okay=False),
              help="Folder of local model folders (<repo_id>/) for weight-space kinship.")
@click.option("--include-quantized", is_flag=True, help="Do not exclude quantized models.")
@DB_OPTION
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show the best N only.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line, with every component (alignment: per-task cosines, tensors, bytes "
                   "read, requests).")
def score_cmd(base: str, description: str, calib: tuple[str, ...], weights_dir: str | None, include_quantized: bool,
              db_url: str | None, top: int | None, as_json: bool) -> None:
    """Score the crawled descendants of --base for --target; scores are stored per target.

    The alignment with the target's gradient shows where `auto` with the same --target and --calib
    probed the candidates (the target remembers its gradient)."""
    from mergekit_from.calibration import read_jsonl, sample_texts
    from zoo.scoring import score_target

    texts = sample_texts(s for path in calib for s in read_jsonl(path))
    cands = score_target(_store(db_url), base, description, calib=texts, weights_dir=weights_dir,
                         include_quantized=include_quantized)
    for c in cands[:top]:
        if as_json:
            click.echo(json.dumps({"repo_id": c.repo_id, "score": c.score, "relation": c.relation, "hops": c.hops,
                                   "compatible": c.compatible, "components": c.components}))
        else:
            parts = " ".join(f"{k}={v['value']:.2f}" for k, v in c.components.items()
                             if isinstance(v["value"], float | int))
            click.echo(f"{c.score:6.3f}  {c.repo_id:<44} {parts}  [{c.components['compatibility']['why']}]")
            if "alignment" in c.components:
                click.echo(f"{'':8}alignment: {c.components['alignment']['why']}")


@zoo.command("export")
@DB_OPTION
@click.option("--base", default=None, help="Check compatibility against this base.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default="-",
              help="Output file (default: stdout).")
def export_cmd(db_url: str | None, base: str | None, fmt: str, out: str) -> None:
    """Export the store's models (one row per model) as CSV or JSON."""
    from zoo.inventory import FIELDS, inventory

    rows = inventory(_store(db_url), base)
    try:
        stream = sys.stdout if out == "-" else open(out, "w", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write it ({exc.strerror})") from None
    try:
        if fmt == "json":
            json.dump(rows, stream, indent=2)
            stream.write("\n")
        else:
            writer = csv.DictWriter(stream, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if stream is not sys.stdout:
            stream.close()
