"""`mergekit-from auto`: name a base model and what you want, get the merge the Hub's pool allows.

One way through: Hub -> crawler -> store -> scorer -> shortlist -> download -> recipe ->
mergekit (the `mergekit-from yaml` code path) -> card -> optional push. The recipe that ran is
the output's ``mergekit_config.yml``; the run is recorded in the store's ``merge_runs`` table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from mergekit.merge_methods.base import MergeMethod
from pydantic import ValidationError
from sqlalchemy import select

from db.kinds import RunStatus
from mergekit_from.calibration import Sample, read_jsonl, sample_texts
from mergekit_from.errors import ConfigError, MergekitFromError, ModelInputError, first_line, one_line
from mergekit_from.methods import from_merge, fw_hard, fw_soft
from mergekit_from.methods.from_merge import DEFAULT_K
from mergekit_from.output import Output
from mergekit_from.release import Release, Source, push_folder, worse_than_base, write_release_card
from mergekit_from.report import Reporter
from mergekit_from.weights import PICKLE_FILES

# fw_soft first: the default, the only method measured to keep most of several experts' skills on the task zoo
# (benchmarks/results/quality.md; README "Which FW variant").
AUTO_METHODS: dict[str, MergeMethod] = {m.spec.name: m for m in (fw_soft, fw_hard, from_merge)}
METHODS = tuple(AUTO_METHODS)
DATA_METHODS = (fw_hard.spec.name, fw_soft.spec.name)  # their pre-pass fits the merge to --calib data
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
    max_probe: int | None = None  # probe at most this many candidates (best first by the cards); None: all


@dataclass
class PoolModel:
    repo_id: str
    sha: str | None
    score: float
    components: dict[str, Any]
    path: Path | None = None
    adapter: bool = False  # a LoRA adapter of the base: the recipe names it BASE+ADAPTER (mergekit's syntax)

    def reference(self, base_path: Path) -> str:
        """How the recipe names it; FW folds an adapter into the base tensor by tensor."""
        return f"{base_path}+{self.path}" if self.adapter else str(self.path)


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
    probes: dict[str, Any] | None = None  # what the probes read before download (zoo.probe.ProbeReport.summary)


@dataclass(frozen=True)
class Calibration:
    """The ``--calib`` data, parsed once: the files (the recipe and the store record them) and their samples."""

    files: dict[str, Path] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def read_calibration(items: tuple[str, ...]) -> Calibration:
    """``[TASK=]FILE`` items (task = file stem when not named), every line checked now, before any download."""
    files: dict[str, Path] = {}
    samples: dict[str, list[Sample]] = {}
    for item in items:
        task, sep, path = str(item).partition("=")
        if not sep:
            task, path = Path(item).stem, str(item)
        parsed = read_jsonl(path)
        if task in files:
            raise ConfigError(f"--calib: two files for task {task!r} ({files[task]} and {path})")
        files[task], samples[task] = Path(path), parsed
    return Calibration(files, samples)


def check_request(req: AutoRequest) -> Calibration:
    """Everything checkable before any network call; returns the parsed calibration data."""
    if req.method not in METHODS:
        raise ConfigError(f"--method {req.method!r}: expected one of {', '.join(METHODS)}")
    _check_repo_id("--base", req.base)
    if not req.target.strip():
        raise ConfigError("--target is empty: say in words what the merge is for")
    if req.pool_size < 1:
        raise ConfigError(f"--pool-size must be >= 1, got {req.pool_size}")
    if req.max_probe is not None and req.max_probe < 1:
        raise ConfigError(f"--max-probe must be >= 1, got {req.max_probe}")
    if req.method in DATA_METHODS and not req.calib:
        raise ConfigError(f"--method {req.method} needs calibration data (--calib FILE); "
                          "use --method from for a data-free merge")
    calib = read_calibration(req.calib)
    req.settings = check_settings(req.method, req.settings, list(calib.files))
    if req.push_to_hub:
        from huggingface_hub import get_token

        _check_repo_id("--push-to-hub", req.push_to_hub)
        if not get_token():
            raise ConfigError(f"--push-to-hub {req.push_to_hub}: no token; set HF_TOKEN or run `hf auth login`")
    return calib


def check_output(req: AutoRequest, calib: Calibration) -> Output:
    """--out must not hold the calibration files, the store or the download cache the run reads."""
    from huggingface_hub.constants import HF_HUB_CACHE
    from sqlalchemy.engine import make_url

    from db.store import default_url

    url = make_url(req.db_url or default_url())
    store = [url.database] if url.get_backend_name() == "sqlite" and url.database else []
    return Output.check(req.out, "auto", [*calib.files.values(), *store, req.cache_dir or HF_HUB_CACHE],
                        req.overwrite)


def _check_repo_id(option: str, repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"{option} {repo_id!r} is not a Hub repo id: {first_line(exc)}") from None


def check_settings(method: str, settings: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """``--set`` values checked against the method's own settings (the recipe's checks, run now,
    not after the downloads); returns them with local paths made absolute, since the recipe that
    auto writes lives elsewhere."""
    if method in DATA_METHODS:
        return _check_prepass_settings(AUTO_METHODS[method], settings, tasks)
    _check_parameters(AUTO_METHODS[method], settings)
    return settings


def _check_parameters(method: MergeMethod, settings: dict[str, Any]) -> None:
    name, specs = method.spec.name, {p.name: p for p in method.spec.parameters}
    for key, value in settings.items():
        if key not in specs:
            raise ConfigError(f"--set {key}: not a setting of {name} (accepted: {', '.join(sorted(specs))})")
        try:
            specs[key].validate(value)
        except ValidationError as exc:
            raise ConfigError(f"--set {key}={value!r} is invalid for {name}: {one_line(exc)}") from None


def _check_prepass_settings(method: MergeMethod, settings: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    from mergekit_from.prepass.registry import settings_model
    from mergekit_from.prepass.settings import INIT_KEYWORDS

    name = method.spec.name
    model = settings_model(name)
    accepted = sorted(set(model.model_fields) - {"targets"})  # auto sets the targets from --calib
    for key in settings:
        if key not in accepted:
            raise ConfigError(f"--set {key}: not a setting of {name} (accepted: {', '.join(accepted)})")
    try:
        model.model_validate({"targets": tasks, **settings})
    except ValidationError as exc:
        raise ConfigError(f"--set for {name}: {one_line(exc)}") from None
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


def ensure_crawled(req: AutoRequest, store, crawler, reporter: Reporter) -> None:
    """Crawl the base's model tree unless the store holds a fresh crawl of it."""
    from db import Edge, Model

    with store.session() as s:
        stamps = s.scalars(select(Model.updated_at).join(Edge, Edge.child_id == Model.repo_id)
                           .where(Edge.parent_id == req.base)).all()
    newest = max(stamps, default=None)  # the store hands back aware UTC datetimes
    fresh = newest is not None and datetime.now(timezone.utc) - newest < timedelta(hours=req.max_age_hours)
    if fresh and not req.refresh:
        reporter.say(f"store has a crawl of {req.base} from {newest:%Y-%m-%d %H:%M} UTC; not crawling again")
        return
    reporter.say(f"crawling the model tree of {req.base} on {crawler.endpoint}")
    report = crawler.crawl_tree(req.base, recursive=True)
    reporter.say(f"listed {report.listed} models, enriched {report.enriched}")


def shortlist(store, candidates, k: int, tasks: list[str] | None = None,
              adapters: bool = False) -> tuple[list[PoolModel], list[dict[str, str]]]:
    """The top ``k`` candidates that can be merged (LoRA adapters only with ``adapters``); the rest with the reason.

    ``tasks`` (the target has a gradient): only candidates aligned with some task's gradient get in,
    each task's best-aligned first, then the best remaining by score."""
    from db import Model

    with store.session() as s:
        rows = {m.repo_id: m for m in s.scalars(select(Model).where(Model.repo_id.in_([c.repo_id for c in candidates])))}
    pool, excluded, eligible = [], [], []
    for c in candidates:
        m = rows.get(c.repo_id)
        why = None
        if m is not None and m.status in ("gated", "missing", "error"):
            why = f"not readable ({m.status})"
        elif c.compatible is not True:
            why = c.components.get("compatibility", {}).get("why") or "compatibility unknown"
        elif m is not None and m.is_adapter and not adapters:
            why = "LoRA adapter (only fw_hard/fw_soft pools take adapters)"
        elif m is not None and m.is_quantized:
            why = "quantized"
        elif tasks is not None and not aligned_tasks(c):
            why = no_evidence(c)
        if why:
            excluded.append({"repo_id": c.repo_id, "why": why})
        else:
            eligible.append(c)
    for c in by_evidence(eligible, tasks) if tasks else eligible:
        if len(pool) >= k:
            excluded.append({"repo_id": c.repo_id, "why": f"outside the top {k} (score {c.score:.3f})"})
        else:
            m = rows.get(c.repo_id)
            pool.append(PoolModel(c.repo_id, m.sha if m else None, c.score, c.components,
                                  adapter=bool(m is not None and m.is_adapter)))
    return pool, excluded


def aligned_tasks(candidate) -> dict[str, float]:
    """The target tasks whose gradient the candidate's probe aligns with (positive cosine)."""
    per_task = candidate.components.get("alignment", {}).get("per_task", {})
    return {t: v for t, v in per_task.items() if v > 0}


def no_evidence(candidate) -> str:
    """Why a candidate without positive alignment stays out, with its scores (the card lists it)."""
    comp = candidate.components.get("alignment")
    if comp is None:
        return f"not probed (score {candidate.score:.3f})"
    cos = ", ".join(f"{t} {v:+.3f}" for t, v in comp["per_task"].items()) or comp.get("error", "nothing read")
    return f"no positive alignment with any target task (score {candidate.score:.3f}; cosines {cos})"


def by_evidence(candidates, tasks: list[str]) -> list:
    """Each task's best-aligned candidate first (task order), then the rest by score."""
    first = []
    for task in tasks:
        best = max((c for c in candidates if aligned_tasks(c).get(task, 0) > 0 and c not in first),
                   key=lambda c: aligned_tasks(c)[task], default=None)
        if best is not None:
            first.append(best)
    return first + [c for c in candidates if c not in first]


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
        "models": [{"model": m.reference(base_path)} for m in pool],
    }
    if req.method in DATA_METHODS:
        recipe[req.method] = {"targets": {t: str(p.resolve()) for t, p in files.items()}, **req.settings}
    else:
        recipe["parameters"] = {"k": DEFAULT_K, **req.settings}
    header = [f"# Written by `mergekit-from auto` for: {req.target}", f"# base: {req.base}"]
    header += [f"# pool: {m.repo_id}@{m.sha} (score {m.score:.3f}) -> {m.path}" for m in pool]
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False)


def run_auto(req: AutoRequest) -> AutoResult:
    reporter = Reporter(req.quiet)
    with reporter.running():
        return _run_auto(req, reporter)


def _run_auto(req: AutoRequest, reporter: Reporter) -> AutoResult:
    from db import open_store
    from zoo.crawler import Crawler

    started = time.perf_counter()
    calib = check_request(req)
    output = check_output(req, calib)
    api = HfApi(endpoint=req.endpoint)
    base_sha = probe_base(api, req.base)
    store = open_store(req.db_url)
    ensure_crawled(req, store, Crawler(store, req.endpoint, progress=reporter.progress), reporter)
    base_path = download(req.base, base_sha, req)  # first: the target's gradient is taken at the base
    gradient_key, probes = gather_evidence(req, store, calib, base_path, base_sha, reporter)
    target_id, pool, excluded = choose_pool(req, store, calib, gradient_key)
    reporter.say("pool: " + ", ".join(f"{m.repo_id} ({m.score:.3f})" for m in pool))
    run_id = _record_start(req, store, target_id, pool, excluded)
    try:
        release = Release(base=Source(req.base, base_sha), sources=[], method=req.method, settings={},
                          target=req.target, recipe="", endpoint=api.endpoint.rstrip("/"), excluded=excluded,
                          run_id=run_id, probes=probes)
        result = _merge(req, reporter, output, calib, release, base_path, pool)
    except BaseException as exc:
        _record_failure(store, run_id, exc)
        raise
    result.seconds = time.perf_counter() - started
    _record_result(store, run_id, result)
    store.close()
    return result


def gather_evidence(req: AutoRequest, store, calib: Calibration, base_path: Path, base_sha: str | None,
                    reporter: Reporter) -> tuple[str | None, dict[str, Any] | None]:
    """The target's gradient at the base (cached) and a probe of every compatible candidate not probed
    at its commit yet (``--max-probe``: the first N by the cards' scores); returns the gradient's key and
    what the probes read. Without --calib there is no gradient: the scores come from the cards and the tree alone."""
    if not calib.files:
        return None, None
    from mergekit_from.target_gradient import target_gradient
    from zoo.probe import candidates, probe
    from zoo.scoring import score_target

    reporter.say("computing the target's gradient at the base")
    grad = target_gradient(base_path, req.base, base_sha, calib.files, req.settings)
    texts = sample_texts(s for samples in calib.samples.values() for s in samples)
    ranked = [c.repo_id for c in score_target(store, req.base, req.target, calib=texts)
              if c.compatible is True and "access" not in c.components]
    todo = candidates(store, ranked[: req.max_probe])
    summary = probe(store, grad, req.endpoint, todo, progress=reporter.progress).summary()
    reporter.say(probe_line(summary))
    return grad.key, summary


def probe_line(probes: dict[str, Any]) -> str:
    """One line on what the probes read before download (auto's log, the demo)."""
    line = (f"probed {probes['probed']} candidates in {probes['seconds']:.1f}s ({probes['reused']} probed before"
            f"{', not again' if probes['reused'] else ''})")
    if probes["probed"]:
        line += (f": read {probes['bytes_read'] / 2**20:.2f} of their {probes['full_bytes'] / 2**20:.1f} MiB"
                 f" (per candidate median {probes['share_median']:.2%}, max {probes['share_max']:.2%};"
                 f" resolver calls median {probes['calls_median']:g}, max {probes['calls_max']})")
    return line


def choose_pool(req: AutoRequest, store, calib: Calibration,
                gradient_key: str | None = None) -> tuple[int, list[PoolModel], list[dict[str, str]]]:
    """Score the crawled descendants for the target; returns the target's id, the pool and the left-out."""
    from zoo.scoring import score_target

    texts = sample_texts(s for samples in calib.samples.values() for s in samples)
    candidates = score_target(store, req.base, req.target, calib=texts, gradient_key=gradient_key)
    tasks = list(calib.files) if gradient_key else None
    if tasks and not any(aligned_tasks(c) for c in candidates):
        probed = sum("alignment" in c.components for c in candidates)
        raise ModelInputError(f"no candidate shows evidence for the target: none of the {probed} probed "
                              f"descendants of {req.base} aligns with the gradient of any --calib task "
                              f"({', '.join(tasks)})")
    pool, excluded = shortlist(store, candidates, req.pool_size, tasks, adapters=req.method in DATA_METHODS)
    if not pool:
        reasons = "; ".join(f"{e['repo_id']}: {e['why']}" for e in excluded[:3])
        raise ModelInputError(f"no compatible candidates for {req.base} among {len(candidates)} crawled "
                              f"descendants{' (' + reasons + ')' if reasons else ''}")
    return candidates[0].target_id, pool, excluded


def _record_start(req: AutoRequest, store, target_id: int, pool: list[PoolModel],
                  excluded: list[dict[str, str]]) -> int:
    from db import MergeRun

    inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(req).items()}
    with store.session() as s:
        run = MergeRun(target_id=target_id, method=req.method, inputs=inputs, pool=[m.repo_id for m in pool],
                       status=RunStatus.RUNNING.value, details={"excluded": excluded})
        s.add(run)
        s.flush()
        return run.run_id


def _record_failure(store, run_id: int, exc: BaseException) -> None:
    from db import MergeRun

    with store.session() as s:
        row = s.get(MergeRun, run_id)
        row.status, row.details = RunStatus.FAILED.value, {**(row.details or {}), "error": one_line(exc)}
        row.finished_at = datetime.now(timezone.utc)


def _record_result(store, run_id: int, result: AutoResult) -> None:
    from db import MergeRun

    with store.session() as s:
        row = s.get(MergeRun, run_id)
        row.status, row.output = RunStatus.DONE.value, str(result.out)
        row.picks = [{"repo_id": r, "coefficient": c, "pick_share": result.pick_share.get(r)}
                     for r, c in result.coefficients.items()]
        row.details = {**(row.details or {}), "evaluation": result.evaluation, "pushed": result.pushed,
                       "seconds": result.seconds}
        row.finished_at = datetime.now(timezone.utc)


def _merge(req: AutoRequest, reporter: Reporter, output: Output, calib: Calibration, release: Release,
           base_path: Path, pool: list[PoolModel]) -> AutoResult:
    """Download the pool, merge through `mergekit-from yaml`'s path, evaluate, write the card, push;
    ``release`` comes with what is known before the merge (base, endpoint, left-out, run, probes)."""
    for m in pool:
        reporter.say(f"downloading {m.repo_id}@{(m.sha or '')[:12]}")
        m.path = download(m.repo_id, m.sha, req)
    with output.staged() as stage:
        recipe_text = _run_recipe(req, reporter, stage, base_path, pool, calib.files)
        coefficients, share = _coefficients(req, stage, base_path, pool)
        evaluation = _evaluate(reporter, stage, base_path, calib.samples)
        recipe = yaml.safe_load(recipe_text)
        settings = recipe.get(req.method) or recipe.get("parameters")
        release = replace(
            release, sources=[Source(m.repo_id, m.sha, m.score, coefficients.get(m.repo_id), share.get(m.repo_id),
                                     m.components) for m in pool],
            settings=settings, recipe=recipe_text, evaluation=evaluation,
        )
        write_release_card(stage, release)
        _write_run_record(stage, release)
    pushed = None
    if req.push_to_hub:
        reporter.say(f"pushing to {req.push_to_hub}")
        pushed = push_folder(req.out, req.push_to_hub, req.endpoint)
    return AutoResult(req.out, release.run_id, pool, coefficients, share, evaluation, pushed, 0.0, release.probes)


def _run_recipe(req: AutoRequest, reporter: Reporter, stage: Path, base_path: Path, pool: list[PoolModel],
                files: dict[str, Path]) -> str:
    """Write the recipe and merge it into ``stage``; returns the recipe as recorded (re-runs from anywhere)."""
    from mergekit.options import MergeOptions

    from mergekit_from.recipe import check_recipe_file, merge_into

    recipe_file = stage.parent / "recipe.yml"
    recipe_file.write_text(build_recipe(req, base_path, pool, files))
    merge_into(check_recipe_file(recipe_file, MergeOptions(quiet=not reporter.progress)), stage)
    return (stage / "mergekit_config.yml").read_text()


def _evaluate(reporter: Reporter, stage: Path, base_path: Path,
              samples: dict[str, list[Sample]]) -> dict[str, dict[str, float]] | None:
    """Calibration loss per task of the base and the merge (None without --calib); warns where the merge is worse."""
    from mergekit_from.prepass.evaluation import calibration_losses

    if not samples:
        return None
    reporter.say("evaluating on the calibration data")
    evaluation = {"base": calibration_losses(base_path, samples, base_path),
                  "merged": calibration_losses(stage, samples, base_path)}
    (stage / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    for task in worse_than_base(evaluation):
        reporter.warn(f"the merge's calibration loss on {task} is worse than the base's "
                      f"({evaluation['base'][task]:.3f} -> {evaluation['merged'][task]:.3f})")
    return evaluation


def _write_run_record(stage: Path, release: Release) -> None:
    """``auto_run.json``: what the card says, as data."""
    (stage / "auto_run.json").write_text(json.dumps(
        {"run_id": release.run_id, "base": asdict(release.base), "sources": [asdict(s) for s in release.sources],
         "excluded": release.excluded, "method": release.method, "settings": release.settings,
         "evaluation": release.evaluation, "worse_than_base": worse_than_base(release.evaluation),
         "probes": release.probes},
        indent=1, default=str))


def _coefficients(req: AutoRequest, out: Path, base_path: Path,
                  pool: list[PoolModel]) -> tuple[dict[str, float], dict[str, float]]:
    """Per source repo: its coefficient in the merge, and (FW) its share of the picks."""
    if req.method not in DATA_METHODS:
        from mergekit_from.methods.from_pool import mean_coefficients

        weights = mean_coefficients(base_path, [m.path for m in pool], req.settings)
        return {m.repo_id: w for m, w in zip(pool, weights)}, {}
    return _fw_coefficients(out, {str(base_path): req.base, **{m.reference(base_path): m.repo_id for m in pool}}, pool)


def _fw_coefficients(out: Path, labels: dict[str, str],
                     pool: list[PoolModel]) -> tuple[dict[str, float], dict[str, float]]:
    """Read the FW trace once: its coefficients and pick shares by repo id, and ``fw_trace.png``
    redrawn with repo ids instead of the cache's snapshot folders."""
    from mergekit_from.prepass.plot import PLOT_FILE, plot_trace
    from mergekit_from.prepass.trace import TRACE_FILE, FWTrace

    trace = FWTrace.read(out / TRACE_FILE)
    plot_trace(trace, out / PLOT_FILE, labels)
    coefficients = {labels.get(r, r): v for r, v in trace.coefficients.items()}
    share: dict[str, float] = {}
    for it in trace.iterations:
        for r, v in it.pick_share.items():
            share[labels.get(r, r)] = share.get(labels.get(r, r), 0.0) + v / len(trace.iterations)
    return ({m.repo_id: coefficients.get(m.repo_id, 0.0) for m in pool},
            {m.repo_id: round(share.get(m.repo_id, 0.0), 4) for m in pool})
