"""Crawl a Hub (the real one or ``zoo serve``) into the ``db`` store.

Listing pages are fetched with huggingface_hub's own session and error mapping, but through a
small pager that saves the ``Link: rel="next"`` URL with each page's rows in one transaction,
so a crawl killed at any point resumes from the next unstored page. Each listed model is then
enriched (``model_info``, safetensors header, ``adapter_config.json``) by a few worker threads;
an unchanged ``sha`` is skipped. Errors are recorded on the model row, never raised.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token, hf_hub_download
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    NotASafetensorsRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import (
    build_hf_headers,
    get_session,
    hf_raise_for_status,
    parse_datetime,
    parse_ratelimit_headers,
)
from sqlalchemy import select, update
from tqdm.auto import tqdm

from db import AdapterConfig, CrawlState, Edge, Model, Store, TensorFingerprint, WeightFile
from db.kinds import RELATIONS, Relation, Status
from zoo.errors import HubAccessError, HubCrawlError, ZooConfigError
from zoo.fingerprint import Fingerprint
from zoo.inventory import descendants
from zoo.resilience import (
    RetryPolicy,
    Throttle,
    call_with_retry,
    checked_endpoint,
    is_connect_failure,
)

log = logging.getLogger(__name__)

# One listing call carries what the crawler keeps about a model (one API call per page).
LIST_EXPAND = ["author", "sha", "lastModified", "createdAt", "library_name", "pipeline_tag", "tags", "cardData",
               "downloads", "likes", "gated", "private", "config"]
CONFIG_KEYS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "torch_dtype", "dtype", "tie_word_embeddings",
               "quantization_config")
RECURSE = (Relation.FINETUNE, Relation.ADAPTER, Relation.MERGE)  # quantized models are leaves
CARD_TEXT_CAP = 20_000


def now() -> datetime:
    return datetime.now(timezone.utc)


def _when(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)  # the Hub's "2024-01-02T03:04:05.000Z"; fast path
    except ValueError:
        return parse_datetime(value)


@contextmanager
def short_lived_allocations() -> Iterator[None]:
    """Pause the cyclic garbage collector around CPU-bound work whose many containers reference
    counting frees on its own (a listing page parsed, turned into rows and written: ~10 per model).

    Otherwise they outlive a few young collections and count towards a full one, and a full
    collection walks every object of the process: ~0.1 s each once torch and mergekit are
    imported (the ``mergekit-from`` CLI and ``auto`` import them; ``zoo.crawler`` alone does not),
    one or two per 10,000 listed models. Cycles made meanwhile wait for the next one.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def info_fields(info: ModelInfo) -> dict[str, Any]:
    """A ``model_info`` result in the API's own JSON vocabulary, as listing items come."""
    return {"id": info.id, "sha": info.sha, "lastModified": info.last_modified, "createdAt": info.created_at,
            "author": info.author, "library_name": info.library_name, "pipeline_tag": info.pipeline_tag,
            "tags": info.tags, "cardData": info.card_data.to_dict() if info.card_data is not None else None,
            "gated": info.gated, "private": info.private, "downloads": info.downloads, "likes": info.likes,
            "config": info.config, "siblings": [{"rfilename": s.rfilename} for s in info.siblings or []]}


def model_row(fields: dict[str, Any], updated_at: datetime | None = None) -> dict[str, Any]:
    """The ``models`` columns from the API's JSON fields (absent keys stay absent).

    Listing items are used as they come: building ``ModelInfo`` objects and copying their card
    data would double what a bare ``list_models`` iteration costs. One pass over the tags."""
    card = fields.get("cardData") or {}
    tags = fields.get("tags") or []
    config = fields.get("config") or {}
    declared = card.get("datasets") or []
    datasets = [declared] if isinstance(declared, str) else [str(d) for d in declared]
    lic = card.get("license")
    quantized = adapter = False
    for t in tags:
        kind, colon, rest = t.partition(":")
        if not colon:  # most tags: no prefix
            quantized = quantized or t == "gguf"
        elif kind == "dataset":
            if rest not in datasets:
                datasets.append(rest)
        elif kind == "license":
            lic = lic or rest
        elif kind == "base_model":
            quantized = quantized or rest.startswith("quantized:")
            adapter = adapter or rest.startswith("adapter:")
    row: dict[str, Any] = {"repo_id": fields["id"], "updated_at": updated_at or now(),
                           "is_quantized": quantized or bool(config.get("quantization_config")),
                           "is_adapter": adapter or fields.get("library_name") == "peft"
                           or any(s.get("rfilename") == "adapter_config.json" for s in fields.get("siblings") or [])}
    for column, value in (("sha", fields.get("sha")), ("last_modified", _when(fields.get("lastModified"))),
                          ("created_at", _when(fields.get("createdAt"))), ("author", fields.get("author")),
                          ("library_name", fields.get("library_name")), ("pipeline_tag", fields.get("pipeline_tag")),
                          ("tags", tags or None), ("card_data", card or None), ("datasets", datasets or None),
                          ("license", lic if isinstance(lic, str) else None), ("private", fields.get("private")),
                          ("downloads", fields.get("downloads")), ("likes", fields.get("likes")),
                          ("config", {k: v for k, v in config.items() if k in CONFIG_KEYS} or None)):
        if value is not None:
            row[column] = value
    if fields.get("gated") is not None:  # False (open) or "auto" / "manual"
        row["gated"] = fields["gated"] or None
    return row


def tag_edges(repo_id: str, tags: Iterable[str], observed_at: datetime | None = None) -> list[dict[str, Any]]:
    """``base_model:<relation>:<parent>`` tags as edges."""
    edges = []
    for tag in tags:
        parts = tag.split(":", 2)
        if len(parts) == 3 and parts[0] == "base_model" and parts[1] in RELATIONS:
            edges.append({"child_id": repo_id, "parent_id": parts[2], "relation": parts[1], "source": "tag",
                          "observed_at": observed_at or now()})
    return edges


@dataclass
class Enrichment:
    """What one worker learned about one repo; written by the main thread."""

    repo_id: str
    status: Status
    row: dict[str, Any] = field(default_factory=dict)
    edges: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None
    weight_files: list[dict[str, Any]] = field(default_factory=list)
    adapter: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class CrawlReport:
    listed: int = 0
    pages: int = 0
    enriched: int = 0
    skipped_unchanged: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class Crawler:
    """``Crawler(store, endpoint).crawl_tree("org/base")``; the token (argument or ``HF_TOKEN``)
    is handed to huggingface_hub per call and never written anywhere."""

    def __init__(self, store: Store, endpoint: str | None = None, *, token: str | bool | None = None,
                 workers: int = 4, max_rps: float | None = None, retry: RetryPolicy | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True):
        self.store = store
        self.api = HfApi(endpoint=endpoint, token=token)
        self.endpoint = checked_endpoint(self.api.endpoint)
        self._token = token
        self.workers = max(1, workers)
        self.retry = retry or RetryPolicy()
        self.throttle = Throttle(max_rps)
        self.cache_dir = cache_dir  # huggingface_hub's cache for the small files read (None: HF_HUB_CACHE)
        self.progress = progress  # progress bars and retry notes on stderr

    # -- listing --------------------------------------------------------------------------------

    def _call(self, fn):  # noqa: ANN001, ANN202 - thin wrapper
        def on_retry(exc: BaseException, wait: float) -> None:
            log.warning("retrying in %.1fs after %s", wait, _short(exc))

        return call_with_retry(fn, self.retry, self.throttle, on_retry if self.progress else None)

    def _failure(self, exc: BaseException, what: str) -> Exception:
        """The one-line error for a Hub call that kept failing: an unreachable Hub is named as such."""
        if is_connect_failure(exc):
            return HubAccessError(f"cannot connect to the Hub at {self.endpoint} ({_short(exc)})")
        return HubCrawlError(f"{what} failed ({_short(exc)}); what is stored stays, run the crawl again to resume")

    def _state_key(self, params: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([self.endpoint, params], sort_keys=True).encode()).hexdigest()[:32]

    def _fetch_page(self, url: str, query: dict[str, Any] | None, headers: dict[str, str]
                    ) -> tuple[bytes, str | None]:
        """One listing page's JSON body and its next-page URL."""
        def fetch():  # noqa: ANN202
            r = get_session().get(url, params=query, headers=headers)
            hf_raise_for_status(r)
            return r

        try:
            r = self._call(fetch)
        except Exception as exc:  # noqa: BLE001 - pages stored so far stay; a rerun resumes here
            raise self._failure(exc, f"listing {url}") from exc
        limit = parse_ratelimit_headers(r.headers)
        if limit is not None and limit.remaining == 0:  # the window is spent: wait it out before asking
            self.throttle.pause(limit.reset_in_seconds)
        return r.content, (r.links.get("next", {}).get("url") if r.links else None)

    def _store_page(self, key: str, body: bytes, next_url: str | None) -> int:
        """Commit one listing page's rows, edges and next-page URL in one transaction."""
        rows, edges, stamp = [], [], now()
        for item in json.loads(body):
            rows.append(model_row(item, stamp))
            edges += tag_edges(item["id"], item.get("tags") or [], stamp)
        with self.store.session() as s:
            self.store.upsert(s, Model, rows)
            self.store.upsert(s, Edge, edges)
            s.execute(update(CrawlState).where(CrawlState.query_key == key).values(
                next_url=next_url, pages_done=CrawlState.pages_done + 1,
                items_done=CrawlState.items_done + len(rows), finished=next_url is None, updated_at=stamp))
        return len(rows)

    def list_query(self, params: dict[str, Any], *, max_models: int | None = None,
                   report: CrawlReport | None = None) -> int:
        """Run (or resume) one listing query; every page and its state commit together.

        Pages are fetched and stored one after the other. A thread fetching the next page while
        this one is written was measured slower on a busy machine: both ends spent more CPU, and
        responses took twice as long to deliver (the reader waits for the GIL after each 64 KiB read).
        """
        params = {**params, "expand": LIST_EXPAND}
        key = self._state_key(params)
        with self.store.session() as s:
            state = s.get(CrawlState, key)
            resume = state.next_url if state is not None and not state.finished else None
            if state is None or state.finished:  # a new pass over a finished query
                self.store.upsert(s, CrawlState, [{"query_key": key, "endpoint": self.endpoint, "params": params,
                                                   "next_url": None, "pages_done": 0, "items_done": 0,
                                                   "finished": False, "updated_at": now()}])
        url, query = (resume, None) if resume else (f"{self.endpoint}/api/models", params)
        headers = build_hf_headers(token=self._token)
        listed = 0
        desc = f"list {params.get('filter') or params.get('search') or 'models'}"
        bar = tqdm(desc=desc, unit="model", disable=not self.progress, leave=False)
        try:
            while url is not None and (max_models is None or listed < max_models):
                body, next_url = self._fetch_page(url, query, headers)
                with short_lived_allocations():
                    n = self._store_page(key, body, next_url)
                url, query = next_url, None  # the next URL carries the query
                listed += n
                bar.update(n)
                if report is not None:
                    report.listed += n
                    report.pages += 1
        finally:
            bar.close()
        return listed

    # -- the tree -------------------------------------------------------------------------------

    def crawl_tree(self, base: str, *, relations: Iterable[str] = RELATIONS, recursive: bool = False,
                   max_models: int | None = None, enrich: bool = True) -> CrawlReport:
        """List the children of ``base`` per relation (and theirs, when ``recursive``), then enrich."""
        relations = tuple(relations)
        unknown = [r for r in relations if r not in RELATIONS]
        if unknown:
            raise ZooConfigError(f"unknown relation {unknown[0]!r}; expected one of {', '.join(RELATIONS)}")
        self._check_base(base)
        report = CrawlReport()
        with self.store.session() as s:
            self.store.upsert(s, Model, [{"repo_id": base}])
        # All four relations: one ``base_model:<id>`` listing per parent (relations read from the
        # tags), a quarter of the API calls; a subset: one ``base_model:<relation>:<id>`` each.
        filters = [""] if set(relations) == set(RELATIONS) else [f"{rel}:" for rel in relations]
        frontier, seen = [base], {base}
        while frontier:
            parent = frontier.pop(0)
            for prefix in filters:
                budget = None if max_models is None else max_models - report.listed
                if budget is not None and budget <= 0:
                    break
                self.list_query({"filter": f"base_model:{prefix}{parent}"}, max_models=budget, report=report)
            if recursive:
                # Children come from the store, so pages listed before a resume still recurse.
                with self.store.session() as s:
                    kids = s.scalars(select(Edge.child_id).where(
                        Edge.parent_id == parent, Edge.relation.in_([r for r in relations if r in RECURSE]))).all()
                for kid in sorted(set(kids) - seen):
                    seen.add(kid)
                    frontier.append(kid)
        if enrich:
            self.enrich(set(descendants(self.store, base, relations)) | {base}, report)
        return report

    def _check_base(self, base: str) -> None:
        """Fail before anything is stored when ``base`` is not on this Hub (its listing would be empty)."""
        try:
            self._call(lambda: self.api.model_info(base, expand=["sha"]))
        except GatedRepoError:  # a subclass of the next one: the repo is there, its files need access
            return
        except RepositoryNotFoundError:
            raise HubAccessError(f"base {base!r} not found on {self.endpoint}") from None
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise self._failure(exc, f"looking up {base!r}") from exc

    def crawl_search(self, *, search: str | None = None, filters: list[str] | None = None,
                     author: str | None = None, max_models: int | None = None, enrich: bool = True) -> CrawlReport:
        """One plain listing (search / filter tags / author), then enrichment of what matched."""
        params: dict[str, Any] = {}
        if search:
            params["search"] = search
        if filters:
            params["filter"] = list(filters)
        if author:
            params["author"] = author
        report = CrawlReport()
        self.list_query(params, max_models=max_models, report=report)
        if enrich:
            self.enrich(self._matching_ids(search, filters, author), report)
        return report

    def _matching_ids(self, search: str | None, filters: list[str] | None, author: str | None) -> set[str]:
        with self.store.session() as s:
            q = select(Model.repo_id, Model.tags, Model.author)
            if search:
                q = q.where(Model.repo_id.ilike(f"%{search}%"))
            out = set()
            for rid, tags, auth in s.execute(q):
                if author and auth != author:
                    continue
                if filters and not set(filters) <= set(tags or []):
                    continue
                out.add(rid)
            return out

    # -- enrichment -----------------------------------------------------------------------------

    def enrich(self, repo_ids: Iterable[str], report: CrawlReport | None = None) -> CrawlReport:
        """``model_info`` + header + adapter config for each repo whose sha changed since last time."""
        report = report or CrawlReport()
        ids = sorted(set(repo_ids))
        # A gated repo is worth another look only when there is a token that might have been granted.
        done = (Status.ENRICHED.value,) if self._has_token() else (Status.ENRICHED.value, Status.GATED.value)
        with self.store.session() as s:
            fresh = set(s.scalars(select(Model.repo_id).where(
                Model.repo_id.in_(ids), Model.enriched_sha == Model.sha, Model.status.in_(done)
            )).all()) if ids else set()
        todo = set(ids) - fresh
        report.skipped_unchanged += len(ids) - len(todo)
        bar = tqdm(total=len(todo), desc="enrich", unit="model", disable=not self.progress, leave=False)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="zoo-enrich") as pool:
            futures = [pool.submit(self._enrich_one, rid) for rid in sorted(todo)]
            for fut in as_completed(futures):
                result = fut.result()
                self._write(result)
                report.enriched += 1
                report.statuses[result.status.value] = report.statuses.get(result.status.value, 0) + 1
                bar.update(1)
        bar.close()
        return report

    def _has_token(self) -> bool:
        return isinstance(self._token, str) or (self._token is None and get_token() is not None)

    def _enrich_one(self, repo_id: str) -> Enrichment:
        try:
            info = self._call(lambda: self.api.model_info(repo_id))
        except GatedRepoError as exc:
            return Enrichment(repo_id, Status.GATED, {"repo_id": repo_id, "gated": "manual"}, error=_short(exc))
        except (RepositoryNotFoundError, RevisionNotFoundError, DisabledRepoError) as exc:
            return Enrichment(repo_id, Status.MISSING, error=_short(exc))
        except Exception as exc:  # noqa: BLE001 - recorded, the crawl goes on
            return Enrichment(repo_id, Status.ERROR, error=_short(exc))
        row = model_row(info_fields(info))
        result = Enrichment(repo_id, Status.ENRICHED, row, edges=tag_edges(repo_id, info.tags or []))
        files = {s.rfilename for s in info.siblings or []}
        try:
            self._read_files(info, files, result)
        except GatedRepoError as exc:
            result.status, result.error = Status.GATED, _short(exc)
            row["gated"] = row.get("gated") or "manual"
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            result.status, result.error = Status.MISSING, _short(exc)
        except (RemoteEntryNotFoundError, NotASafetensorsRepoError, SafetensorsParsingError) as exc:
            result.error = _short(exc)  # metadata is complete; the weights are not safetensors
        except Exception as exc:  # noqa: BLE001
            result.status, result.error = Status.ERROR, _short(exc)
        return result

    def _read_files(self, info: ModelInfo, files: set[str], result: Enrichment) -> None:
        rid, sha = info.id, info.sha
        if "README.md" in files:  # the card body is task evidence the API's cardData lacks
            path = self._call(lambda: hf_hub_download(rid, "README.md", revision=sha, endpoint=self.endpoint,
                                                      token=self._token, cache_dir=self.cache_dir))
            text = Path(path).read_text(errors="replace")
            result.row["card_text"] = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)[:CARD_TEXT_CAP]
        if "config.json" in files:
            cfg = self._json_file(rid, "config.json", sha)
            result.row["config"] = {**(result.row.get("config") or {}),
                                    **{k: v for k, v in cfg.items() if k in CONFIG_KEYS}}
            if cfg.get("quantization_config"):
                result.row["is_quantized"] = True
        if "adapter_config.json" in files:
            cfg = self._json_file(rid, "adapter_config.json", sha)
            result.row["is_adapter"] = True
            result.adapter = {"repo_id": rid, "sha": sha, "peft_type": cfg.get("peft_type"), "r": cfg.get("r"),
                              "lora_alpha": cfg.get("lora_alpha"), "target_modules": _as_list(cfg.get("target_modules")),
                              "base_model_name_or_path": cfg.get("base_model_name_or_path"),
                              "task_type": cfg.get("task_type"), "raw": cfg}
            if cfg.get("base_model_name_or_path"):
                result.edges.append({"child_id": rid, "parent_id": cfg["base_model_name_or_path"],
                                     "relation": Relation.ADAPTER.value, "source": "adapter_config",
                                     "observed_at": now()})
            name = "adapter_model.safetensors"
            if name in files:
                meta = self._call(lambda: self.api.parse_safetensors_file_metadata(rid, name, revision=sha))
                self._record_headers(result, sha, {name: meta}, "adapter")
        elif "model.safetensors" in files or "model.safetensors.index.json" in files:
            meta = self._call(lambda: self.api.get_safetensors_metadata(rid, revision=sha))
            self._record_headers(result, sha, meta.files_metadata, "model")

    def _json_file(self, repo_id: str, filename: str, sha: str | None) -> dict[str, Any]:
        path = self._call(lambda: hf_hub_download(repo_id, filename, revision=sha, endpoint=self.endpoint,
                                                  token=self._token, cache_dir=self.cache_dir))
        return json.loads(Path(path).read_text())

    @staticmethod
    def _record_headers(result: Enrichment, sha: str | None, files: dict[str, Any], kind: str) -> None:
        tensors = []
        for filename, meta in files.items():
            params: dict[str, int] = {}
            for name, t in meta.tensors.items():
                tensors.append((name, t.dtype, t.shape))
                params[t.dtype] = params.get(t.dtype, 0) + t.parameter_count
            result.weight_files.append({"repo_id": result.repo_id, "filename": filename, "sha": sha,
                                        "n_tensors": len(meta.tensors), "params_by_dtype": params,
                                        "metadata": meta.metadata or None})
        fp = Fingerprint.of(tensors, kind)
        result.fingerprint = {"repo_id": result.repo_id, "sha": sha, **fp.row()}

    def _write(self, r: Enrichment) -> None:
        row = {"repo_id": r.repo_id, **r.row, "status": r.status.value, "error": r.error, "updated_at": now()}
        if r.status in (Status.ENRICHED, Status.GATED):
            row["enriched_sha"] = r.row.get("sha")
        with self.store.session() as s:
            self.store.upsert(s, Model, [row])
            self.store.upsert(s, Edge, r.edges)
            if r.fingerprint is not None:
                self.store.upsert(s, TensorFingerprint, [r.fingerprint])
                s.query(WeightFile).filter(WeightFile.repo_id == r.repo_id).delete()
                self.store.upsert(s, WeightFile, r.weight_files)
            if r.adapter is not None:
                self.store.upsert(s, AdapterConfig, [r.adapter])


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
