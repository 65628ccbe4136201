"""`mergekit-from auto`: name a base model and what you want, get the merge the Hub's pool allows.

One way through: Hub -> crawler -> store -> scorer -> shortlist -> download -> recipe ->
mergekit (the `mergekit-from yaml` code path) -> card -> optional push. The recipe that ran is
the output's ``mergekit_config.yml``; the run is recorded in the store's ``merge_runs`` table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import click
import yaml
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from pydantic import ValidationError
from sqlalchemy import select

from mergekit_from.errors import ConfigError, MergekitFromError, ModelInputError, one_line
from mergekit_from.output import Output, overwrite_option
from mergekit_from.release import Release, Source, model_card, push_folder, worse_than_base
from mergekit_from.weights import PICKLE_FILES

# fw_soft first: the default, the only method measured to keep most of several experts' skills on the task zoo
# (benchmarks/results/quality.md; README "Which FW variant").
METHODS = ("fw_soft", "fw_hard", "from")
DATA_METHODS = ("fw_hard", "fw_soft")
# What a snapshot may bring: weights as safetensors, configs, tokenizer, card. Never code.
SAFE_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model", "*.tiktoken",
              "vocab*", "merges.txt", "README.md"]


@dataclass
class AutoRequest:
    base: str
    target: str
    out: Path
    calib: tuple[str, ...] = ()  # FILE (task = file stem) or TASK=FILE
    endpoint: str | None = None
    db_url: str | None = None
    pool_size: int = 8
    method: str = METHODS[0]
    settings: dict[str, Any] = field(default_factory=dict)  # method settings overriding the defaults
    push_to_hub: str | None = None
    allow_pickle: bool = False
    refresh: bool = False
    max_age_hours: float = 24.0
    cache_dir: Path | None = None  # Hugging Face cache (None: the standard one)
    quiet: bool = False
    overwrite: bool = False  # write into a non-empty --out that mergekit-from did not write


@dataclass
class PoolModel:
    repo_id: str
    sha: str | None
    score: float
    components: dict[str, Any]
    path: Path | None = None


@dataclass
class AutoResult:
    out: Path
    run_id: int
    pool: list[PoolModel]
    coefficients: dict[str, float]
    pick_share: dict[str, float]
    evaluation: dict[str, dict[str, float]] | None
    pushed: str | None
    seconds: float


def _say(req: AutoRequest, msg: str) -> None:
    if not req.quiet:
        click.echo(msg, err=True)


@contextlib.contextmanager
def silenced(quiet: bool) -> Iterator[None]:
    """``--quiet``: no progress bars (huggingface_hub's "Fetching N files" included), no log
    records below ERROR and no Python warnings while auto runs; all restored afterwards."""
    if not quiet:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off, level = are_progress_bars_disabled(), logging.root.manager.disable
    disable_progress_bars()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)
        if not bars_were_off:
            enable_progress_bars()


def check_request(req: AutoRequest) -> dict[str, Path]:
    """Everything checkable before any network call; returns {task: calibration file}."""
    from mergekit_from.calibration import read_jsonl

    if req.method not in METHODS:
        raise ConfigError(f"--method {req.method!r}: expected one of {', '.join(METHODS)}")
    _check_repo_id("--base", req.base)
    if not req.target.strip():
        raise ConfigError("--target is empty: say in words what the merge is for")
    if req.pool_size < 1:
        raise ConfigError(f"--pool-size must be >= 1, got {req.pool_size}")
    if req.method in DATA_METHODS and not req.calib:
        raise ConfigError(f"--method {req.method} needs calibration data (--calib FILE); "
                          "use --method from for a data-free merge")
    files: dict[str, Path] = {}
    for item in req.calib:
        task, sep, path = str(item).partition("=")
        if not sep:
            task, path = Path(item).stem, str(item)
        read_jsonl(path)  # fail now, naming file and line, rather than after the downloads
        if task in files:
            raise ConfigError(f"--calib: two files for task {task!r} ({files[task]} and {path})")
        files[task] = Path(path)
    req.settings = check_settings(req.method, req.settings, list(files))
    if req.push_to_hub:
        from huggingface_hub import get_token

        _check_repo_id("--push-to-hub", req.push_to_hub)
        if not get_token():
            raise ConfigError(f"--push-to-hub {req.push_to_hub}: no token; set HF_TOKEN or run `hf auth login`")
    return files


def check_output(req: AutoRequest, files: dict[str, Path]) -> Output:
    """--out must not hold the calibration files, the store or the download cache the run reads."""
    from huggingface_hub.constants import HF_HUB_CACHE
    from sqlalchemy.engine import make_url

    from db.store import default_url

    url = make_url(req.db_url or default_url())
    store = [url.database] if url.get_backend_name() == "sqlite" and url.database else []
    return Output.check(req.out, "auto", [*files.values(), *store, req.cache_dir or HF_HUB_CACHE], req.overwrite)


def _check_repo_id(option: str, repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        why = one_line(exc).removeprefix("HFValidationError: ")
        raise ConfigError(f"{option} {repo_id!r} is not a Hub repo id: {why}") from None


def check_settings(method: str, settings: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """``--set`` values checked against the method's own settings (the recipe's checks, run now,
    not after the downloads); returns them with local paths made absolute, since the recipe that
    auto writes lives elsewhere."""
    if method == "from":
        from mergekit_from.methods.from_merge import from_merge

        specs = {p.name: p for p in from_merge.spec.parameters}
        for key, value in settings.items():
            if key not in specs:
                raise ConfigError(f"--set {key}: not a setting of {method} (accepted: {', '.join(sorted(specs))})")
            try:
                specs[key].validate(value)
            except ValidationError as exc:
                raise ConfigError(f"--set {key}={value!r} is invalid for {method}: {one_line(exc)}") from None
        return settings
    from mergekit_from.prepass.registry import settings_model
    from mergekit_from.prepass.settings import INIT_KEYWORDS

    model = settings_model(method)
    accepted = sorted(set(model.model_fields) - {"targets"})  # auto sets the targets from --calib
    for key in settings:
        if key not in accepted:
            raise ConfigError(f"--set {key}: not a setting of {method} (accepted: {', '.join(accepted)})")
    try:
        model.model_validate({"targets": tasks, **settings})
    except ValidationError as exc:
        raise ConfigError(f"--set for {method}: {one_line(exc)}") from None
    paths = {}
    for key in ("init", "tokenizer"):
        value = settings.get(key)
        if value is None or (key == "init" and value in INIT_KEYWORDS):
            continue
        if not Path(value).expanduser().is_dir():
            hint = f" (and not one of {'|'.join(INIT_KEYWORDS)})" if key == "init" else ""
            raise ConfigError(f"--set {key}={value}: no such folder{hint}")
        paths[key] = str(Path(value).expanduser().resolve())
    return {**settings, **paths}


def probe_base(api: HfApi, base: str) -> str | None:
    """The base's current commit; fails fast, in one line, when the Hub is unreachable or the
    base does not exist there or is gated."""
    try:
        info = api.model_info(base, expand=["sha", "gated"])
        if info.gated:  # metadata is public; the files are what a gate withholds
            api.file_exists(base, "config.json", revision=info.sha)
        return info.sha
    except GatedRepoError:  # before its parent class RepositoryNotFoundError
        raise ModelInputError(f"base model {base!r} is gated on {api.endpoint}: set HF_TOKEN with access") from None
    except RepositoryNotFoundError:
        raise ModelInputError(f"base model {base!r} not found on {api.endpoint}") from None
    except HfHubHTTPError as exc:
        raise MergekitFromError(f"the Hub at {api.endpoint} answered {one_line(exc)}") from None
    except Exception as exc:  # transport errors from the HTTP client
        raise MergekitFromError(f"cannot reach the Hub at {api.endpoint}: {one_line(exc)}") from None


def ensure_crawled(req: AutoRequest, store, crawler) -> None:
    """Crawl the base's model tree unless the store holds a fresh crawl of it."""
    from db import Edge, Model

    with store.session() as s:
        stamps = s.scalars(select(Model.updated_at).join(Edge, Edge.child_id == Model.repo_id)
                           .where(Edge.parent_id == req.base)).all()
    newest = max(stamps, default=None)  # the store hands back aware UTC datetimes
    fresh = newest is not None and datetime.now(timezone.utc) - newest < timedelta(hours=req.max_age_hours)
    if fresh and not req.refresh:
        _say(req, f"store has a crawl of {req.base} from {newest:%Y-%m-%d %H:%M} UTC; not crawling again")
        return
    _say(req, f"crawling the model tree of {req.base} on {crawler.endpoint}")
    report = crawler.crawl_tree(req.base, recursive=True)
    _say(req, f"listed {report.listed} models, enriched {report.enriched}")


def shortlist(store, candidates, k: int) -> tuple[list[PoolModel], list[dict[str, str]]]:
    """The top ``k`` candidates that can be merged as full weights; the rest with the reason."""
    from db import Model

    with store.session() as s:
        rows = {m.repo_id: m for m in s.scalars(select(Model).where(Model.repo_id.in_([c.repo_id for c in candidates])))}
    pool, excluded = [], []
    for c in candidates:
        m = rows.get(c.repo_id)
        why = None
        if m is not None and m.status in ("gated", "missing", "error"):
            why = f"not readable ({m.status})"
        elif c.compatible is not True:
            why = c.components.get("compatibility", {}).get("why") or "compatibility unknown"
        elif m is not None and m.is_adapter:
            why = "LoRA adapter (FW pools take full weights; fold it with mergekit's base+lora first)"
        elif m is not None and m.is_quantized:
            why = "quantized"
        elif len(pool) >= k:
            why = f"outside the top {k} (score {c.score:.3f})"
        if why:
            excluded.append({"repo_id": c.repo_id, "why": why})
        else:
            pool.append(PoolModel(c.repo_id, m.sha if m else None, c.score, c.components))
    return pool, excluded


def download(repo_id: str, sha: str | None, req: AutoRequest) -> Path:
    """The repo's snapshot at ``sha`` in the Hugging Face cache: safetensors, configs, tokenizer."""
    patterns = SAFE_FILES + (PICKLE_FILES if req.allow_pickle else [])
    try:
        path = Path(snapshot_download(repo_id, revision=sha, endpoint=req.endpoint, cache_dir=req.cache_dir,
                                      allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - one line naming the repo
        raise ModelInputError(f"cannot download {repo_id}@{sha}: {one_line(exc)}") from None
    if not any(path.glob("*.safetensors")):
        hint = "" if req.allow_pickle else " (pickled weights are only read with --allow-pickle)"
        raise ModelInputError(f"{repo_id}@{sha} has no safetensors weights{hint}")
    return path


def build_recipe(req: AutoRequest, base_path: Path, pool: list[PoolModel], files: dict[str, Path]) -> str:
    """The recipe as text: a provenance header, then an ordinary mergekit recipe (the output records
    it with the calibration files copied next to it)."""
    recipe: dict[str, Any] = {
        "merge_method": req.method,
        "base_model": str(base_path),
        "models": [{"model": str(m.path)} for m in pool],
    }
    if req.method in DATA_METHODS:
        recipe[req.method] = {"targets": {t: str(p.resolve()) for t, p in files.items()}, **req.settings}
    else:
        from mergekit_from.methods.from_merge import DEFAULT_K

        recipe["parameters"] = {"k": DEFAULT_K, **req.settings}
    header = [f"# Written by `mergekit-from auto` for: {req.target}", f"# base: {req.base}"]
    header += [f"# pool: {m.repo_id}@{m.sha} (score {m.score:.3f}) -> {m.path}" for m in pool]
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False)


def run_auto(req: AutoRequest) -> AutoResult:
    with silenced(req.quiet):
        return _run_auto(req)


def _run_auto(req: AutoRequest) -> AutoResult:
    from db import MergeRun, open_store
    from zoo.crawler import Crawler
    from zoo.scoring import score_target

    started = time.perf_counter()
    files = check_request(req)
    output = check_output(req, files)
    api = HfApi(endpoint=req.endpoint)
    endpoint = api.endpoint.rstrip("/")
    base_sha = probe_base(api, req.base)
    store = open_store(req.db_url)
    crawler = Crawler(store, req.endpoint, progress=not req.quiet)
    ensure_crawled(req, store, crawler)

    candidates = score_target(store, req.base, req.target, calib=list(files.values()) or None)
    pool, excluded = shortlist(store, candidates, req.pool_size)
    if not pool:
        reasons = "; ".join(f"{e['repo_id']}: {e['why']}" for e in excluded[:3])
        raise ModelInputError(f"no compatible candidates for {req.base} among {len(candidates)} crawled "
                              f"descendants{' (' + reasons + ')' if reasons else ''}")
    _say(req, "pool: " + ", ".join(f"{m.repo_id} ({m.score:.3f})" for m in pool))

    inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(req).items()}
    with store.session() as s:
        run = MergeRun(target_id=candidates[0].target_id, method=req.method, inputs=inputs,
                       pool=[m.repo_id for m in pool], status="running", details={"excluded": excluded})
        s.add(run)
        s.flush()
        run_id = run.run_id
    try:
        result = _merge(req, output, files, base_sha, pool, excluded, endpoint, run_id)
    except BaseException as exc:
        with store.session() as s:
            row = s.get(MergeRun, run_id)
            row.status, row.details = "failed", {**(row.details or {}), "error": one_line(exc)}
            row.finished_at = datetime.now(timezone.utc)
        raise
    result.seconds = time.perf_counter() - started
    with store.session() as s:
        row = s.get(MergeRun, run_id)
        row.status, row.output = "done", str(result.out)
        row.picks = [{"repo_id": r, "coefficient": c, "pick_share": result.pick_share.get(r)}
                     for r, c in result.coefficients.items()]
        row.details = {**(row.details or {}), "evaluation": result.evaluation, "pushed": result.pushed,
                       "seconds": result.seconds}
        row.finished_at = datetime.now(timezone.utc)
    store.close()
    return result


def _merge(req: AutoRequest, output: Output, files: dict[str, Path], base_sha: str | None, pool: list[PoolModel],
           excluded: list[dict[str, str]], endpoint: str, run_id: int) -> AutoResult:
    """Download, write the recipe, merge through `mergekit-from yaml`'s path, evaluate, card, push."""
    from mergekit.options import MergeOptions

    from mergekit_from.prepass.evaluation import calibration_losses
    from mergekit_from.recipe import check_recipe_file, merge_into

    base_path = download(req.base, base_sha, req)
    for m in pool:
        _say(req, f"downloading {m.repo_id}@{(m.sha or '')[:12]}")
        m.path = download(m.repo_id, m.sha, req)
    with output.staged() as stage:
        recipe_file = stage.parent / "recipe.yml"
        recipe_file.write_text(build_recipe(req, base_path, pool, files))
        merge_into(check_recipe_file(recipe_file, MergeOptions(quiet=req.quiet)), stage)
        recipe_text = (stage / "mergekit_config.yml").read_text()  # as recorded: re-runs from anywhere
        if req.method in DATA_METHODS:
            _label_trace(stage, {str(base_path): req.base, **{str(m.path): m.repo_id for m in pool}})
        recipe = yaml.safe_load(recipe_text)

        coefficients, share = _coefficients(req, stage, base_path, pool)
        evaluation = None
        if files:
            _say(req, "evaluating on the calibration data")
            evaluation = {"base": calibration_losses(base_path, files, base_path),
                          "merged": calibration_losses(stage, files, base_path)}
            (stage / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
        worse = worse_than_base(evaluation)
        for task in worse:
            _say(req, f"warning: the merge's calibration loss on {task} is worse than the base's "
                      f"({evaluation['base'][task]:.3f} -> {evaluation['merged'][task]:.3f})")
        settings = recipe.get(req.method) or recipe.get("parameters")
        release = Release(
            base=Source(req.base, base_sha),
            sources=[Source(m.repo_id, m.sha, m.score, coefficients.get(m.repo_id), share.get(m.repo_id),
                            m.components) for m in pool],
            method=req.method, settings=settings, target=req.target, recipe=recipe_text, endpoint=endpoint,
            evaluation=evaluation, excluded=excluded, run_id=run_id,
        )
        (stage / "README.md").write_text(model_card(release))
        (stage / "auto_run.json").write_text(json.dumps(
            {"run_id": run_id, "base": asdict(release.base), "sources": [asdict(s) for s in release.sources],
             "excluded": excluded, "method": req.method, "settings": settings, "evaluation": evaluation,
             "worse_than_base": worse},
            indent=1, default=str))
    pushed = None
    if req.push_to_hub:
        _say(req, f"pushing to {req.push_to_hub}")
        pushed = push_folder(req.out, req.push_to_hub, req.endpoint)
    return AutoResult(req.out, run_id, pool, coefficients, share, evaluation, pushed, 0.0)


def _label_trace(out: Path, labels: dict[str, str]) -> None:
    """Redraw ``fw_trace.png`` with repo ids instead of the cache's snapshot folders."""
    from mergekit_from.prepass.plot import PLOT_FILE, plot_trace
    from mergekit_from.prepass.trace import TRACE_FILE, FWTrace

    plot_trace(FWTrace.read(out / TRACE_FILE), out / PLOT_FILE, labels)


def _coefficients(req, out: Path, base_path: Path, pool: list[PoolModel]) -> tuple[dict[str, float], dict[str, float]]:
    """Per source repo: its coefficient in the merge, and (FW) its share of the picks."""
    by_path = {str(m.path): m.repo_id for m in pool}
    if req.method == "from":
        from mergekit_from.methods.from_pool import mean_coefficients

        weights = mean_coefficients(base_path, [m.path for m in pool], req.settings)
        return {m.repo_id: w for m, w in zip(pool, weights)}, {}
    trace = json.loads((out / "fw_trace.json").read_text())
    coefficients = {by_path.get(r, r): v for r, v in trace.get("coefficients", {}).items()}
    share: dict[str, float] = {}
    for it in trace["iterations"]:
        for r, v in it.get("pick_share", {}).items():
            share[by_path.get(r, r)] = share.get(by_path.get(r, r), 0.0) + v / len(trace["iterations"])
    return ({m.repo_id: coefficients.get(m.repo_id, 0.0) for m in pool},
            {m.repo_id: round(share.get(m.repo_id, 0.0), 4) for m in pool})


def parse_settings(items: tuple[str, ...]) -> dict[str, Any]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


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
              help="fw_soft/fw_hard need --calib; from is data-free.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Method setting (e.g. max_iters=5, lmo=tensor, k=4); repeat.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hugging Face cache for the downloads (default: the standard cache).")
@click.option("--refresh", is_flag=True, help="Crawl again even if the store has a fresh crawl.")
@click.option("--allow-pickle", is_flag=True, help="Also download pickled weights (.bin/.pt). Unsafe.")
@click.option("--push-to-hub", default=None, metavar="REPO", help="Upload the result (needs HF_TOKEN).")
@click.option("--quiet", is_flag=True)
@overwrite_option
def auto_cmd(base, target, calib, out, endpoint, db_url, pool_size, method, settings, cache_dir, refresh,
             allow_pickle, push_to_hub, quiet, overwrite) -> None:
    """Crawl, score, shortlist, download and merge the best pool of BASE's fine-tunes for TARGET."""
    req = AutoRequest(base=base, target=target, out=out, calib=calib, endpoint=endpoint, db_url=db_url,
                      pool_size=pool_size, method=method, settings=parse_settings(settings), push_to_hub=push_to_hub,
                      allow_pickle=allow_pickle, refresh=refresh, cache_dir=cache_dir, quiet=quiet,
                      overwrite=overwrite)
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
