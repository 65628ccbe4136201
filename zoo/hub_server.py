"""A local Hugging Face Hub: serves a folder of model folders over the Hub's wire format.

The real ``huggingface_hub`` client works against it (``HfApi(endpoint=server.endpoint)``):
``list_models`` (filter / search / author / pipeline_tag / sort / limit / expand / full /
cardData / config, ``Link`` cursor pagination), ``model_info`` (with revisions, ``blobs``,
``expand``), the repo tree, and ``resolve`` HEAD/GET with ``X-Repo-Commit``, ``ETag``, LFS
headers and ranged reads, so ``hf_hub_download``, ``snapshot_download`` and
``get_safetensors_metadata`` work. Errors carry the Hub's ``X-Error-Code``. Gated repos and
fault injection (429 with ``RateLimit``, 5xx bursts) are configurable for tests. Writes take
``create_repo`` and ``upload_folder`` / ``create_commit`` with files sent inline (the preupload
answer is always "regular", so neither LFS nor Xet storage is involved). Writes need one of the
configured access tokens, or a server started ``writable``; they never go through a symlink, so
they stay inside the served folder (reads follow the operator's symlinks).

Standard-library ``ThreadingHTTPServer``; it only ever binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
from collections import Counter, deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

from db.kinds import Relation
from zoo.local_repos import Catalog, LocalRepo

HOST = "127.0.0.1"
DEFAULT_PAGE_SIZE = 1000
DEFAULT_FIELDS = ("_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag",
                  "library_name", "createdAt", "modelId")
FULL_FIELDS = DEFAULT_FIELDS + ("author", "sha", "lastModified", "gated", "disabled", "siblings")
LIST_EXPAND = {"author", "cardData", "config", "createdAt", "disabled", "downloads", "downloadsAllTime", "gated",
               "lastModified", "library_name", "likes", "pipeline_tag", "private", "safetensors", "sha", "siblings",
               "spaces", "tags", "trendingScore", "transformersInfo", "inference", "evalResults", "gguf",
               "mask_token", "model-index", "widgetData", "resourceGroup", "inferenceProviderMapping"}
INFO_ONLY_EXPAND = {"baseModels", "childrenModelCount", "usedStorage"}
SORT_KEYS = {"downloads", "likes", "lastModified", "createdAt", "trendingScore", "id"}
REPO_SUBROUTES = {"tree", "revision", "paths-info", "refs", "commits", "preupload", "commit"}


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.body = body or {}


@dataclass
class Fault:
    """Answer the next ``times`` requests whose path matches ``pattern`` with ``status``
    (status 200: answer normally, once ``hold`` is set when one is given)."""

    pattern: re.Pattern[str]
    status: int
    times: int
    reset_s: int = 0
    hold: threading.Event | None = None
    after: int = 0  # let this many matching requests through first


class HubServer:
    """``with HubServer(folder) as hub: HfApi(endpoint=hub.endpoint)...``"""

    def __init__(self, root: str | Path, port: int = 0, *, page_size: int = DEFAULT_PAGE_SIZE,
                 gated: dict[str, str] | None = None, stats: dict[str, dict[str, int]] | None = None,
                 access_tokens: set[str] | None = None, writable: bool = False, verbose: bool = False):
        self.catalog = Catalog(root, gated=gated, stats=stats)
        self.writable = writable
        self._write_lock = threading.Lock()
        self.page_size = page_size
        self.access_tokens = set(access_tokens or ())
        self.verbose = verbose
        # (method, path, status) of recent requests, for tests; bounded so a long `zoo serve` stays small
        self.requests: deque[tuple[str, str, int]] = deque(maxlen=100_000)
        self.bytes_sent: Counter[str] = Counter()  # file bytes sent per resolve path (ranged reads included)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((HOST, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}"

    # -- fault injection (tests) ----------------------------------------------------------------

    def inject(self, pattern: str, status: int, times: int, reset_s: int = 0,
               hold: threading.Event | None = None, after: int = 0) -> None:
        """The next ``times`` requests matching ``pattern`` (a regex on the path) get ``status``;
        a 429 carries ``RateLimit: "api";r=0;t=<reset_s>`` as the Hub sends it; 200 means a
        normal answer, held until ``hold`` is set (a stalled Hub). ``after``: the first matching
        requests pass untouched (an outage in the middle of a listing)."""
        with self._lock:
            self._faults.append(Fault(re.compile(pattern), status, times, reset_s, hold, after))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.pattern.search(path):
                    if fault.after > 0:
                        fault.after -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None

    def log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="zoo-hub", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the API --------------------------------------------------------------------------------

    def repo(self, repo_id: str) -> LocalRepo:
        repo = self.catalog.get(repo_id)
        if repo is None:
            raise HubError(401, "RepoNotFound", f"Repository Not Found for url: {self.endpoint}/api/models/{repo_id}."
                                                " Please make sure you specified the correct `repo_id`.")
        return repo

    @staticmethod
    def check_revision(repo: LocalRepo, revision: str) -> None:
        if unquote(revision) not in ("main", repo.sha):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def check_access(self, repo: LocalRepo, authorization: str | None) -> None:
        if not repo.gated:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if token and token in self.access_tokens:
            return
        msg = f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated" \
              " to access it. Please log in."
        raise HubError(403 if token else 401, "GatedRepo", msg)

    def check_write(self, authorization: str | None) -> None:
        """With access tokens configured, writes need one of them (as on the Hub); without, only a
        server started writable takes writes, from anyone."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        if self.access_tokens:
            if token not in self.access_tokens:
                raise HubError(401, None, "Invalid credentials in Authorization header")
        elif not self.writable:
            raise HubError(403, None, "This zoo server is read-only (start it with --writable or --access-token)")

    def write_target(self, *parts: str) -> Path:
        """Where a write to ``<repo>/<path>`` lands in the served folder; refused (403) when the way
        there passes through a symlink, which could lead outside it."""
        root = self.catalog.root  # resolved
        target = root.joinpath(*parts)
        step = root
        for part in target.relative_to(root).parts:
            step = step / part
            if step.is_symlink():
                raise HubError(403, None, f"Refusing to write through a symlink: {step.relative_to(root).as_posix()}")
        if not target.resolve().is_relative_to(root):  # unreachable with safe paths; a guard all the same
            raise HubError(403, None, f"Refusing to write outside the served folder: {'/'.join(parts)}")
        return target

    def list_models(self, query: dict[str, list[str]]) -> tuple[list[dict[str, Any]], str | None]:
        filters = [f for v in query.get("filter", []) for f in v.split(",") if f]
        author = (query.get("author") or [None])[0]
        search = ((query.get("search") or [""])[0]).lower()
        pipeline = (query.get("pipeline_tag") or [None])[0]
        gated = (query.get("gated") or [None])[0]
        sort = (query.get("sort") or ["trendingScore"])[0]
        if sort not in SORT_KEYS:
            raise HubError(400, None, f"Invalid sort parameter: {sort}")
        expand = query.get("expand", []) + query.get("expand[]", [])
        bad = [e for e in expand if e not in LIST_EXPAND]
        if bad:
            raise HubError(400, None, f"Invalid expand parameter for the models listing: {bad[0]}")
        try:
            limit = int((query.get("limit") or [self.page_size])[0])
        except ValueError:
            raise HubError(400, None, f"Invalid limit: {query['limit'][0]!r}") from None
        page_size = max(1, min(limit, self.page_size))

        def keep(rec: dict[str, Any]) -> bool:
            tags = set(rec["tags"])
            return (all(f in tags or f == rec["id"] for f in filters)
                    and (author is None or rec["author"] == author)
                    and search in rec["id"].lower()
                    and (pipeline is None or rec["pipeline_tag"] == pipeline)
                    and (gated is None or bool(rec["gated"]) == (gated == "true")))

        def sort_key(rec: dict[str, Any]) -> Any:
            return rec[sort] if sort != "id" else ""

        items = [(r, rec) for r in self.catalog.all() if keep(rec := r.record())]
        # Descending by the sort key, ties by id ascending; the cursor holds the last (key, id).
        items.sort(key=lambda it: it[1]["id"])
        items.sort(key=lambda it: sort_key(it[1]), reverse=True)
        start = 0
        if query.get("cursor"):
            try:
                key, last_id = json.loads(base64.urlsafe_b64decode(query["cursor"][0]))
            except ValueError:
                raise HubError(400, None, "Invalid cursor") from None
            start = next((i for i, (_, rec) in enumerate(items)
                          if sort_key(rec) < key or (sort_key(rec) == key and rec["id"] > last_id)), len(items))
        page = items[start:start + page_size]
        next_url = None
        if start + page_size < len(items):
            last = page[-1][1]
            cursor = base64.urlsafe_b64encode(json.dumps([sort_key(last), last["id"]]).encode())
            params = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs]
            next_url = f"{self.endpoint}/api/models?{urlencode(params + [('cursor', cursor.decode())])}"

        full = (query.get("full") or ["false"])[0] == "true"
        fields = ("_id", "id", *expand) if expand else (FULL_FIELDS if full else DEFAULT_FIELDS)
        extras = [k for k, flag in (("cardData", "cardData"), ("config", "config"))
                  if (query.get(flag) or ["false"])[0] in ("true", "1")]
        out = []
        for repo, rec in page:
            out.append({k: self._field(repo, rec, k) for k in (*fields, *extras)})
        return out, next_url

    def _field(self, repo: LocalRepo, rec: dict[str, Any], key: str) -> Any:
        if key in rec:
            return rec[key]
        if key == "safetensors":
            return repo.safetensors
        if key == "usedStorage":
            return sum(f.size for f in repo.files.values())
        if key == "baseModels":
            return {"relation": repo.relation, "models": [{"id": b} for b in repo.base_models]} \
                if repo.base_models else None
        if key == "childrenModelCount":
            counts: dict[str, int] = {}
            for other in self.catalog.all():
                if repo.repo_id in other.base_models:
                    relation = other.relation or Relation.FINETUNE
                    counts[relation] = counts.get(relation, 0) + 1
            return counts
        if key == "downloadsAllTime":
            return repo.downloads
        return None

    def model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> dict[str, Any]:
        repo = self.repo(repo_id)
        self.check_revision(repo, revision)
        rec = repo.record()
        expand = query.get("expand", []) + query.get("expand[]", [])
        bad = [e for e in expand if e not in LIST_EXPAND | INFO_ONLY_EXPAND]
        if bad:
            raise HubError(400, None, f"Invalid expand parameter: {bad[0]}")
        if expand:
            info = {k: self._field(repo, rec, k) for k in ("_id", "id", *expand)}
        else:
            info = dict(rec)  # a copy: the record is cached
            for key in ("safetensors", "usedStorage"):
                info[key] = self._field(repo, rec, key)
        if "siblings" in info and (query.get("blobs") or ["false"])[0] == "true":
            info["siblings"] = [
                {"rfilename": f.path, "size": f.size, "blobId": f.blob_id,
                 **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                for f in repo.files.values()
            ]
        return info

    def tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]]
             ) -> tuple[list[dict[str, Any]], str | None]:
        repo = self.repo(repo_id)
        self.check_revision(repo, revision)
        recursive = (query.get("recursive") or ["false"])[0] in ("true", "True", "1")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}",
                           {"X-Repo-Commit": repo.sha})
        entries: dict[str, dict[str, Any]] = {}
        for p, f in repo.files.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # directories on the way
                if recursive or depth == 1:
                    d = prefix + "/".join(rest[:depth])
                    entries.setdefault(d, {"type": "directory", "oid": repo.sha, "size": 0, "path": d})
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entries[p] = f.tree_entry()
        ordered = [entries[k] for k in sorted(entries)]
        start = int((query.get("cursor") or ["0"])[0])
        page = ordered[start:start + self.page_size]
        next_url = None
        if start + self.page_size < len(ordered):
            params = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs]
            tail = f"/{quote(path)}" if path else ""
            next_url = (f"{self.endpoint}/api/models/{repo_id}/tree/{revision}{tail}?"
                        f"{urlencode(params + [('cursor', str(start + self.page_size))])}")
        return page, next_url

    # -- writes: create_repo, then upload_folder / create_commit ---------------------------------

    def create_repo(self, repo_id: str) -> str:
        parts = repo_id.split("/")
        if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts):
            raise HubError(400, None, f"Invalid repo name: {repo_id!r}")
        with self._write_lock:
            if self.catalog.get(repo_id) is not None:
                raise HubError(409, None, "You already created this model repo",
                               body={"url": f"{self.endpoint}/{repo_id}"})
            folder = self.write_target(repo_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
            self.catalog.rescan(repo_id)
        return f"{self.endpoint}/{repo_id}"

    def preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Every file goes inline in the commit ("regular"): no LFS or Xet storage is needed, and
        the client skips files whose git blob id matches what is already there."""
        repo = self.repo(repo_id)
        self.check_revision(repo, revision)
        out = []
        for f in payload.get("files") or []:
            path = _safe_path(str(f.get("path", "")))
            existing = repo.files.get(path)
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                        "oid": existing.blob_id if existing else None})
        return {"files": out, "commitOid": repo.sha}

    def commit(self, repo_id: str, revision: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        repo = self.repo(repo_id)
        self.check_revision(repo, revision)
        header = next((ln["value"] for ln in lines if ln.get("key") == "header"), {})
        if header.get("parentCommit") and header["parentCommit"] != repo.sha:
            raise HubError(412, None, f"Parent commit {header['parentCommit']} is not the head {repo.sha}")
        ops = []
        for ln in lines:
            key, value = ln.get("key"), ln.get("value") or {}
            if key == "header":
                continue
            path = _safe_path(str(value.get("path", "")))
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"Unsupported encoding for {path}")
                ops.append(("write", path, base64.b64decode(value.get("content", ""))))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("delete", path, b""))
            else:
                raise HubError(400, None, f"Unsupported commit operation {key!r} (this server takes files inline)")
        with self._write_lock:
            targets = [self.write_target(repo_id, path) for _, path, _ in ops]  # all checked before any write
            missing = [path for (op, path, _), target in zip(ops, targets) if op == "delete" and not target.exists()]
            if missing:  # refused before anything is touched
                raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {missing[0]}")
            for (op, _, data), target in zip(ops, targets):  # each file lands whole: written aside, then renamed
                if op == "write":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.upload")
                    tmp.write_bytes(data)
                    tmp.replace(target)
                elif target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            self.catalog.rescan(repo_id)
        sha = self.repo(repo_id).sha
        return {"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}",
                "pullRequestUrl": None}


def _validate_card(content: str) -> dict[str, Any]:
    """The Hub's YAML check of a model card: front matter must parse to a mapping."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", content, flags=re.S)
    if not m:
        return {"errors": [], "warnings": [{"message": "Empty or missing yaml metadata in repo card"}]}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise HubError(400, None, "Invalid YAML", body={"errors": [{"message": str(exc).splitlines()[0]}]}) from None
    if data is not None and not isinstance(data, dict):
        raise HubError(400, None, "Invalid YAML", body={"errors": [{"message": "metadata must be a mapping"}]})
    return {"errors": [], "warnings": []}


def _safe_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise HubError(400, None, f"Invalid path in repo: {path!r}")
    return path


def _split_repo(catalog: Catalog, segs: list[str]) -> tuple[str, list[str]]:
    """Repo ids have one or two segments; the catalog (then the route words) disambiguate."""
    if len(segs) >= 2 and catalog.get(f"{segs[0]}/{segs[1]}") is not None:
        return f"{segs[0]}/{segs[1]}", segs[2:]
    if catalog.get(segs[0]) is not None or len(segs) == 1 or segs[1] in REPO_SUBROUTES:
        return segs[0], segs[1:]
    return f"{segs[0]}/{segs[1]}", segs[2:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mergekit-from-zoo"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.hub.verbose:
            super().log_message(fmt, *args)

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_POST(self) -> None:
        self._dispatch(body=True)

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)
        self.hub.log(self.command, self.path, status)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None, body: bool = True) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, body)

    def _error(self, err: HubError, body: bool) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message, **err.body}, headers, body)

    def _dispatch(self, body: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command == "POST" else b""
        fault = self.hub._take_fault(url.path)
        if fault is not None and fault.hold is not None:
            fault.hold.wait()
        try:
            if fault is not None and fault.status != 200:
                self._fault(fault, body)
            else:
                self._route(url.path, query, body)
        except HubError as err:
            self._error(err, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - a server bug still answers, as the Hub's 500s do
            self._error(HubError(500, None, f"Internal error: {type(exc).__name__}: {exc}"), body)

    def _fault(self, fault: Fault, body: bool) -> None:
        if fault.status == 429:
            msg = f"you have reached your 'api' rate limit. Retry after {fault.reset_s} seconds (0/500 requests" \
                  " remaining in current 300s window)."
            raise HubError(429, None, msg, {"RateLimit": f'"api";r=0;t={fault.reset_s}',
                                            "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
        raise HubError(fault.status, None, HTTPStatus(fault.status).phrase)

    def _route(self, path: str, query: dict[str, list[str]], body: bool) -> None:
        hub = self.hub
        segs = [unquote(s) for s in path.strip("/").split("/") if s]
        if segs[:2] == ["api", "models"] and self.command in ("GET", "HEAD"):
            if len(segs) == 2:
                items, next_url = hub.list_models(query)
                headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
                return self._json(200, items, headers, body)
            repo_id, rest = _split_repo(hub.catalog, segs[2:])
            if not rest:
                return self._json(200, hub.model_info(repo_id, "main", query), body=body)
            if rest[0] == "revision" and len(rest) >= 2:
                return self._json(200, hub.model_info(repo_id, "/".join(rest[1:]), query), body=body)
            if rest[0] == "tree" and len(rest) >= 2:
                entries, next_url = hub.tree(repo_id, rest[1], "/".join(rest[2:]), query)
                headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
                return self._json(200, entries, headers, body)
        if self.command == "POST":
            return self._post(segs, query, body)
        if "resolve" in segs[1:3] and self.command in ("GET", "HEAD"):
            i = segs.index("resolve", 1)
            if len(segs) > i + 2:
                return self._resolve("/".join(segs[:i]), segs[i + 1], "/".join(segs[i + 2:]), body)
        raise HubError(404, None, f"Sorry, we can't find the page you are looking for: {path}")

    def _post(self, segs: list[str], query: dict[str, list[str]], body: bool) -> None:
        hub = self.hub
        hub.check_write(self.headers.get("Authorization"))
        if (query.get("create_pr") or ["0"])[0] in ("1", "true"):
            raise HubError(400, None, "Pull requests are not supported by this server")
        if segs == ["api", "validate-yaml"]:  # upload_folder checks README.md cards first
            return self._json(200, _validate_card(str(self._json_body().get("content", ""))), body=body)
        if segs == ["api", "repos", "create"]:
            payload = self._json_body()
            if payload.get("type", "model") != "model":
                raise HubError(400, None, "Only model repos are supported by this server")
            name, org = payload.get("name"), payload.get("organization")
            repo_id = f"{org}/{name}" if org else str(name)
            return self._json(200, {"url": hub.create_repo(repo_id), "name": repo_id}, body=body)
        if segs[:2] == ["api", "models"] and len(segs) > 3:
            repo_id, rest = _split_repo(hub.catalog, segs[2:])
            if len(rest) == 2 and rest[0] == "preupload":
                return self._json(200, hub.preupload(repo_id, rest[1], self._json_body()), body=body)
            if len(rest) == 2 and rest[0] == "commit":
                lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
                return self._json(200, hub.commit(repo_id, rest[1], lines), body=body)
        raise HubError(404, None, f"Sorry, we can't find the page you are looking for: {self.path}")

    def _json_body(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, None, "The request body is not JSON") from None
        if not isinstance(payload, dict):
            raise HubError(400, None, "The request body is not a JSON object")
        return payload

    def _resolve(self, repo_id: str, revision: str, path: str, body: bool) -> None:
        hub = self.hub
        repo = hub.repo(repo_id)
        hub.check_revision(repo, revision)
        hub.check_access(repo, self.headers.get("Authorization"))
        f = repo.files.get(path)
        if f is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": repo.sha})
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        start, end, status = 0, f.size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, None, f"Invalid range: {rng}", {"Content-Range": f"bytes */{f.size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
            else:
                start = max(0, f.size - int(m.group(2)))
            if start >= f.size or start > end:
                raise HubError(416, None, "Requested range not satisfiable", {"Content-Range": f"bytes */{f.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1 if f.size else 0
        headers["Content-Length"] = str(length)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and length:
            with self.hub._lock:
                self.hub.bytes_sent[urlsplit(self.path).path] += length
            with open(f.abspath, "rb") as fh:
                fh.seek(start)
                left = length
                while left:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
        hub.log(self.command, self.path, status)
