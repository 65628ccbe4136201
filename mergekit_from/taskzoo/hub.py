"""The task zoo as a local Hub folder, labelled or blind, plus distractors made from its experts.

Labelled: the zoo's repo ids and cards, as built. Blind: what most Hub repos look like, and what
a selector that must find experts "with unknown task information" is given: neutral repo ids
derived from a hash (digits only, so no task or kind word can appear) and cards reduced to
``base_model:`` (and a declared ``base_model_relation`` where a repo has one: that is structure,
not task). The truth (repo id -> zoo model, kind, task) stays in :attr:`ServedZoo.truth`, never
in the served folder.

Distractors for a large pool: :func:`perturbed_copy` (an expert plus small seeded noise, saved
as safetensors) and :func:`svd_adapter` (a PEFT LoRA adapter holding the top singular directions
of an expert's task vector).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_from.card import write_card
from mergekit_from.taskzoo.build import LORA_TARGETS
from mergekit_from.taskzoo.manifest import Zoo
from zoo.hub_server import Served

# Files of a zoo model folder that name its task: the card and the build record.
NAMING_FILES = ("README.md", "zoo_entry.json")
WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def anonymous_id(name: str, salt: str, attempt: int = 0) -> str:
    """A stable neutral repo id for ``name``, ``u1234/model-56789`` (digits only)."""
    n = int(hashlib.sha256(f"{salt}\0{name}\0{attempt}".encode()).hexdigest(), 16)
    return f"u{n % 10_000:04d}/model-{n // 10_000 % 100_000}"


@dataclass
class ServedZoo:
    """A Hub folder being filled: zoo model name or distractor name -> repo id, and the hidden truth."""

    zoo: Zoo
    hub: Path
    blind: bool
    salt: str = "taskzoo"
    ids: dict[str, str] = field(default_factory=dict)
    truth: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> {"model", "kind", "task"}

    def repo_id(self, name: str, labelled_id: str) -> str:
        """The id ``name`` is served under (stable per name; collisions between hashes resolved in order)."""
        if name not in self.ids:
            rid, attempt = labelled_id, 0
            if self.blind:
                while (rid := anonymous_id(name, self.salt, attempt)) in self.ids.values():
                    attempt += 1
            self.ids[name] = rid
        return self.ids[name]

    def folder(self, name: str, labelled_id: str, kind: str, task: str | None) -> Path:
        """A fresh folder for a new repo, its truth recorded."""
        rid = self.repo_id(name, labelled_id)
        self.truth[rid] = {"model": name, "kind": kind, "task": task}
        dst = self.hub / rid
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst

    def add_zoo_models(self) -> None:
        """Every zoo model: the built folder itself when labelled, its weights and configs under a neutral
        id with a ``base_model:`` card when blind."""
        models = self.zoo.manifest["models"]
        for name, entry in models.items():
            dst = self.folder(name, entry["repo_id"], entry["kind"], entry.get("task"))
            if not self.blind:
                dst.symlink_to(self.zoo.model_dir(name))
                continue
            parent = entry.get("base") if entry.get("base_model") else None
            parent_id = self.repo_id(parent, models[parent]["repo_id"]) if parent else None
            link_files(self.zoo.model_dir(name), dst, skip=NAMING_FILES, base_id=parent_id)
            if parent_id:
                write_card(dst, "", base_model=parent_id)

    def card(self, name: str, base_id: str, body: str, relation: str | None = None, **labelled: Any) -> None:
        """A distractor's card: ``labelled`` metadata and ``body`` only when labelled."""
        meta = {"base_model": base_id, **({"base_model_relation": relation} if relation else {})}
        write_card(self.hub / self.ids[name], "" if self.blind else f"# {self.ids[name]}\n\n{body}",
                   **meta, **({} if self.blind else labelled))

    @property
    def base_id(self) -> str:
        return self.ids["base"]

    def weight_bytes(self, repo_id: str) -> int:
        return sum(f.stat().st_size for f in (self.hub / repo_id).glob("*.safetensors"))

    def reads(self, served: dict[str, Served], downloaded: set[str],
              requests: list[tuple[str, str, int]] = ()) -> dict[str, Any]:
        """What clients read of each candidate (every served repo but the base), as the local Hub counted
        it, an account independent of the probes' own: ranged reads are reads before a download, so
        they are what a selector probed. Resolver calls count only for candidates never downloaded,
        where every call was a probe; so do API calls (``requests``, the server's log: those from the
        first ranged read on, after the crawl)."""
        import statistics

        per = {rid: served.get(rid, Served()) for rid in self.truth if rid != self.base_id}
        first = next((i for i, (_, _, status) in enumerate(requests) if status == 206), len(requests))
        api = {rid: sum(p.startswith(f"/api/models/{rid}/") or p == f"/api/models/{rid}"
                        for _, p, _ in list(requests)[first:]) for rid in per if rid not in downloaded}
        size = {rid: self.weight_bytes(rid) for rid in per}
        probed = [rid for rid, s in per.items() if s.ranged_bytes]
        share = [per[rid].ranged_bytes / size[rid] for rid in probed if size[rid]]
        calls = [s.calls for rid, s in per.items() if rid not in downloaded]
        starts = [s.first_ranged for s in per.values() if s.first_ranged is not None]
        ends = [s.last_ranged for s in per.values() if s.last_ranged is not None]
        return {
            "candidates": len(per), "probed": len(probed),
            "bytes_read": sum(per[rid].ranged_bytes for rid in probed), "bytes_full": sum(size[rid] for rid in probed),
            "share_median": statistics.median(share) if share else 0.0, "share_max": max(share, default=0.0),
            "calls_median": statistics.median(calls) if calls else 0, "calls_max": max(calls, default=0),
            "api_calls_median": statistics.median(api.values()) if api else 0,
            "api_calls_max": max(api.values(), default=0),
            "read_window_s": max(ends) - min(starts) if starts else 0.0,
            "per_candidate": {rid: {"ranged_bytes": s.ranged_bytes, "bytes": s.bytes, "calls": s.calls,
                                    "size": size[rid]} for rid, s in per.items()},
        }


def link_files(src: Path, dst: Path, skip: tuple[str, ...] = ("README.md",), base_id: str | None = None) -> None:
    """``dst`` holding links to ``src``'s files, less ``skip``; an adapter config is rewritten to name
    ``base_id`` (the id its base is served under) when given."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.is_file() or f.name in skip:
            continue
        if f.name == ADAPTER_CONFIG and base_id:
            config = json.loads(f.read_text())
            (dst / f.name).write_text(json.dumps({**config, "base_model_name_or_path": base_id}, indent=1))
        else:
            (dst / f.name).symlink_to(f.resolve())


def perturbed_copy(expert: Path, base: Path, dst: Path, scale: float, seed: int) -> None:
    """``expert`` + noise of ``scale`` x its task vector's RMS, per tensor, seeded; configs and tokenizer linked."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed)
    theta, theta0 = load_file(expert / WEIGHTS), load_file(base / WEIGHTS)
    out = {}
    for name, t in theta.items():
        rms = (t - theta0[name]).pow(2).mean().sqrt()
        out[name] = (t + scale * rms * torch.randn(t.shape, generator=gen, dtype=t.dtype)).contiguous()
    link_files(expert, dst, skip=(*NAMING_FILES, WEIGHTS))
    save_file(out, str(dst / WEIGHTS), metadata={"format": "pt"})


def svd_adapter(expert: Path, base: Path, dst: Path, rank: int, base_id: str) -> None:
    """A PEFT LoRA adapter on ``base_id``: per target module, the rank-``rank`` SVD of the expert's task
    vector split evenly between B and A (alpha = rank, so the adapter adds B @ A)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    theta, theta0 = load_file(expert / WEIGHTS), load_file(base / WEIGHTS)
    factors = {}
    for name, t in theta.items():
        module = name.removesuffix(".weight")
        if t.ndim != 2 or module.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        u, s, vh = torch.linalg.svd(t - theta0[name], full_matrices=False)
        root = s[:rank].sqrt()
        factors[f"base_model.model.{module}.lora_A.weight"] = (root[:, None] * vh[:rank]).contiguous()
        factors[f"base_model.model.{module}.lora_B.weight"] = (u[:, :rank] * root).contiguous()
    dst.mkdir(parents=True)
    LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM",
               base_model_name_or_path=base_id).save_pretrained(str(dst))
    save_file(factors, str(dst / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    for f in expert.glob("tokenizer*"):
        (dst / f.name).symlink_to(f.resolve())


def reset(hub: Path) -> None:
    if hub.exists():
        shutil.rmtree(hub)
