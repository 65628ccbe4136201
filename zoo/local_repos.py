"""A folder of Hugging Face model folders, seen the way the Hub sees repositories.

``DIR/<org>/<name>/`` becomes repo ``org/name`` and ``DIR/<name>/`` repo ``name``. What the Hub
derives from a repo is derived the same way here: tags from the README model card
(``base_model`` -> ``base_model:<id>`` and ``base_model:<relation>:<id>``, datasets, license,
library, pipeline tag), a commit sha, git blob ids and LFS sha256 for files.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from db.kinds import RELATIONS, Relation
from zoo.fingerprint import header_params

# Files the Hub would keep in LFS: weights and anything big.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".ckpt", ".pkl")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_MARKERS = ("config.json", "README.md", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                ".gitattributes")  # the last one: what a new, still empty Hub repo holds
VISIBLE_DOTFILES = (".gitattributes", ".gitignore")


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class RepoFile:
    path: str
    abspath: Path
    size: int
    mtime_ns: int
    _digests: dict[str, str] = field(default_factory=dict)

    @property
    def lfs(self) -> bool:
        return is_lfs(self.path, self.size)

    def _digest(self, kind: str) -> str:
        if kind not in self._digests:
            h = hashlib.sha1(f"blob {self.size}\0".encode()) if kind == "git" else hashlib.sha256()
            with open(self.abspath, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._digests[kind] = h.hexdigest()
        return self._digests[kind]

    @property
    def blob_id(self) -> str:
        """The git blob sha1 (what the Hub calls ``oid`` / ``blobId``)."""
        return self._digest("git")

    @property
    def sha256(self) -> str:
        return self._digest("sha256")

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass
class LocalRepo:
    """One repository: its files, its card and what the Hub would derive from them."""

    repo_id: str
    root: Path
    files: dict[str, RepoFile]
    sha: str
    last_modified: float
    created_at: float
    card_data: dict[str, Any]
    card_text: str
    config: dict[str, Any] | None
    gated: str | None = None
    downloads: int = 0
    likes: int = 0
    _record: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def scan(cls, repo_id: str, root: Path) -> "LocalRepo":
        files: dict[str, RepoFile] = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            hidden = any(part.startswith(".") and part not in VISIBLE_DOTFILES for part in rel.split("/"))
            if p.is_file() and not hidden:
                st = p.stat()
                files[rel] = RepoFile(rel, p, st.st_size, st.st_mtime_ns)
        # A commit id that changes whenever a file is added, removed, resized or rewritten.
        listing = json.dumps([[f.path, f.size, f.mtime_ns] for f in files.values()])
        sha = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
        mtimes = [f.mtime_ns / 1e9 for f in files.values()] or [root.stat().st_mtime]
        card_data: dict[str, Any] = {}
        card_text = ""
        if "README.md" in files:
            try:
                card = ModelCard.load(files["README.md"].abspath, ignore_metadata_errors=True)
                card_data, card_text = card.data.to_dict(), card.text
            except Exception:  # noqa: BLE001 - the Hub serves repos with broken cards too
                card_text = files["README.md"].abspath.read_text(errors="replace")
        config = None
        if "config.json" in files:
            try:
                config = json.loads(files["config.json"].abspath.read_text())
            except ValueError:
                config = None
        return cls(repo_id, root, files, sha, max(mtimes), min(mtimes), card_data, card_text, config)

    # -- what the Hub derives -------------------------------------------------------------------

    @property
    def author(self) -> str | None:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else None

    @property
    def base_models(self) -> list[str]:
        base = self.card_data.get("base_model")
        if isinstance(base, str):
            return [base]
        return [b for b in base or [] if isinstance(b, str)]

    @property
    def relation(self) -> Relation | None:
        """The Hub's inferred relation to ``base_models``: declared, else guessed from the files."""
        if not self.base_models:
            return None
        declared = self.card_data.get("base_model_relation")
        if declared in RELATIONS:
            return Relation(declared)
        if "adapter_config.json" in self.files:
            return Relation.ADAPTER
        if self.is_quantized:
            return Relation.QUANTIZED
        if len(self.base_models) > 1 or {"merge", "mergekit"} & set(self._card_tags):
            return Relation.MERGE
        return Relation.FINETUNE

    @property
    def is_quantized(self) -> bool:
        return bool((self.config or {}).get("quantization_config")) or any(p.endswith(".gguf") for p in self.files)

    @property
    def _card_tags(self) -> list[str]:
        tags = self.card_data.get("tags") or []
        return [tags] if isinstance(tags, str) else [str(t) for t in tags]

    @property
    def datasets(self) -> list[str]:
        ds = self.card_data.get("datasets") or []
        return [ds] if isinstance(ds, str) else [str(d) for d in ds]

    @property
    def library_name(self) -> str | None:
        if self.card_data.get("library_name"):
            return str(self.card_data["library_name"])
        if "adapter_config.json" in self.files:
            return "peft"
        return "transformers" if self.config is not None else None

    @property
    def pipeline_tag(self) -> str | None:
        if self.card_data.get("pipeline_tag"):
            return str(self.card_data["pipeline_tag"])
        archs = (self.config or {}).get("architectures") or []
        return "text-generation" if any(a.endswith("ForCausalLM") for a in archs) else None

    @property
    def tags(self) -> list[str]:
        tags = list(self._card_tags)
        for extra in (self.library_name, (self.config or {}).get("model_type"), self.pipeline_tag):
            if extra:
                tags.append(str(extra))
        if any(p.endswith(".safetensors") for p in self.files):
            tags.append("safetensors")
        tags += [f"dataset:{d}" for d in self.datasets]
        lic = self.card_data.get("license")
        if isinstance(lic, str):
            tags.append(f"license:{lic}")
        rel = self.relation
        for base in self.base_models:
            tags += [f"base_model:{base}", f"base_model:{rel}:{base}"]
        return list(dict.fromkeys(tags))

    @property
    def safetensors(self) -> dict[str, Any] | None:
        """``{"parameters": {dtype: n}, "total": n}`` from the headers, as the Hub computes it."""
        shards = [f for p, f in self.files.items() if p.endswith(".safetensors")]
        if not shards:
            return None
        params: dict[str, int] = {}
        for f in shards:
            for dtype, n in header_params(f.abspath).items():
                params[dtype] = params.get(dtype, 0) + n
        return {"parameters": params, "total": sum(params.values())}

    def config_subset(self) -> dict[str, Any] | None:
        """The ``config`` key of the API: the few fields the Hub exposes, not the whole file."""
        if self.config is None:
            return None
        keys = ("architectures", "model_type", "quantization_config", "tokenizer_config")
        return {k: self.config[k] for k in keys if k in self.config}

    def record(self) -> dict[str, Any]:
        """Every field the API can return for this repo (camelCase, as the Hub spells them).

        Computed once: a rescan builds new ``LocalRepo`` objects, so the cache cannot go stale."""
        if self._record is None:
            self._record = self._build_record()
        return self._record

    def _build_record(self) -> dict[str, Any]:
        return {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.author,
            "sha": self.sha,
            "lastModified": _iso(self.last_modified),
            "createdAt": _iso(self.created_at),
            "private": False,
            "disabled": False,
            "gated": self.gated or False,
            "downloads": self.downloads,
            "likes": self.likes,
            "trendingScore": 0,
            "library_name": self.library_name,
            "pipeline_tag": self.pipeline_tag,
            "tags": self.tags,
            "cardData": self.card_data or None,
            "config": self.config_subset(),
            "siblings": [{"rfilename": p} for p in self.files],
            "spaces": [],
        }


class Catalog:
    """All repos under a folder; rescanned on demand (after an upload, or by a test)."""

    def __init__(self, root: str | Path, gated: dict[str, str] | None = None,
                 stats: dict[str, dict[str, int]] | None = None):
        self.root = Path(root).expanduser().resolve()
        self.gated = dict(gated or {})
        self.stats = dict(stats or {})
        self._lock = threading.Lock()
        self.repos: dict[str, LocalRepo] = {}
        self.rescan()

    def _repo_dirs(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for first in sorted(self.root.iterdir()):
            if not first.is_dir() or first.name.startswith("."):
                continue
            if any((first / m).is_file() for m in REPO_MARKERS):
                found[first.name] = first
                continue
            for second in sorted(first.iterdir()):
                if second.is_dir() and any((second / m).is_file() for m in REPO_MARKERS):
                    found[f"{first.name}/{second.name}"] = second
        return found

    def rescan(self, repo_id: str | None = None) -> None:
        dirs = self._repo_dirs() if repo_id is None else {repo_id: self.root / repo_id}
        scanned = {rid: self._scan(rid, path) for rid, path in dirs.items() if path.is_dir()}
        with self._lock:
            if repo_id is None:
                self.repos = scanned
            else:
                self.repos.update(scanned)

    def _scan(self, repo_id: str, path: Path) -> LocalRepo:
        repo = LocalRepo.scan(repo_id, path)
        repo.gated = self.gated.get(repo_id)
        stats = self.stats.get(repo_id, {})
        repo.downloads, repo.likes = int(stats.get("downloads", 0)), int(stats.get("likes", 0))
        return repo

    def get(self, repo_id: str) -> LocalRepo | None:
        with self._lock:
            return self.repos.get(repo_id)

    def all(self) -> list[LocalRepo]:
        with self._lock:
            return list(self.repos.values())
