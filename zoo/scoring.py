"""Relevance of the zoo's candidates to a merge target (a base plus a task description).

Components, each in [0, 1], combined as a weighted mean and gated by compatibility
(incompatible -> 0, unknown -> x0.5):

- ``relation``: the edge kind to the base and the hops in the tree (fine-tunes closest);
- ``text``: TF-IDF cosine between the description (plus calibration prompts and responses) and the
  candidate's card text, tags, datasets, pipeline tag and name;
- ``popularity``: log downloads and likes, relative to the pool;
- ``kinship``: when weights are local, the cosine between the candidate's task vector and the mean
  task vector of the top text-relevant candidates (the target's experts; Hu et al. 2024);
- ``alignment``: when the target has a gradient (calibration data) and the candidate was probed
  (:mod:`zoo.probe`), FW's LMO score at the base per task, cosine(-g, tau) on the probe subset; the
  value is the best, over tasks, of the cosine relative to that task's best in the pool. It weighs
  more than the rest together, so where cards say nothing (or mislead) the weights decide.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sqlalchemy import select

from db import AdapterConfig, Model, Score, Store, Target, TensorFingerprint
from db.kinds import Relation, Status
from zoo import adapter
from zoo.arrays import ArrayFolder, is_model_dir, read_file
from zoo.errors import ZooConfigError
from zoo.fingerprint import Compatibility, Fingerprint, compare
from zoo.inventory import descendants
from zoo.probe import stored_probes

SCORER_VERSION = "2"
WEIGHTS = {"relation": 0.2, "text": 0.5, "popularity": 0.1, "kinship": 0.2, "alignment": 1.5}
RELATION_PRIOR = {Relation.FINETUNE: 1.0, Relation.ADAPTER: 0.9, Relation.MERGE: 0.8, Relation.QUANTIZED: 0.1}
HOP_DECAY = 0.75
TEXT_FLOOR = 0.2
N_EXPERTS = 3
STOPWORDS = set("a an and are as at be by for from has in is it its of on or that the this to was were will with "
                "model models fine tuned tune tuning finetuned finetune base llama tiny".split())
TAG_PREFIXES_SKIPPED = ("base_model:", "license:", "region:", "arxiv:")


@dataclass
class Candidate:
    repo_id: str
    relation: str
    hops: int
    score: float
    compatible: bool | None
    components: dict[str, Any]
    target_id: str  # the stored Target this score belongs to


def _tokens(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words if w not in STOPWORDS and len(w) > 1]


def _doc(m: Model) -> str:
    card = m.card_data or {}
    tags = [t for t in m.tags or [] if not t.startswith(TAG_PREFIXES_SKIPPED)]
    parts = [m.repo_id.replace("/", " ").replace("-", " "), " ".join(tags), " ".join(map(str, m.datasets or [])),
             m.pipeline_tag or "", str(card.get("model_name") or ""), m.card_text or ""]
    return " ".join(parts)


def _tfidf_cosines(query: str, docs: dict[str, str]) -> dict[str, float]:
    tokenized = {k: Counter(_tokens(v)) for k, v in docs.items()}
    n = len(tokenized) + 1
    df = Counter(t for c in tokenized.values() for t in c)
    idf = {t: math.log((1 + n) / (1 + df[t])) + 1 for t in df}
    q = Counter(_tokens(query))
    qv = {t: c * idf.get(t, math.log(1 + n) + 1) for t, c in q.items()}
    qn = math.sqrt(sum(v * v for v in qv.values())) or 1.0
    out = {}
    for k, c in tokenized.items():
        dv = {t: (1 + math.log(cnt)) * idf[t] for t, cnt in c.items()}
        dn = math.sqrt(sum(v * v for v in dv.values())) or 1.0
        out[k] = sum(qv[t] * dv[t] for t in qv if t in dv) / (qn * dn)
    return out


class _LocalWeights:
    """Task vectors of models whose weights sit in a local folder (``DIR/<repo_id>/``)."""

    def __init__(self, root: Path, base: str):
        self.root = root
        self.base = ArrayFolder.open(root / base) if is_model_dir(root / base) else None
        self._folders: dict[str, ArrayFolder] = {}
        self._loras: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}

    def has(self, repo_id: str) -> bool:
        d = self.root / repo_id
        return self.base is not None and (is_model_dir(d) or (d / adapter.WEIGHTS).is_file())

    def delta(self, repo_id: str, name: str) -> np.ndarray | None:
        """theta - theta_base for one base tensor (LoRA: scale * B @ A), or None when absent."""
        if is_model_dir(self.root / repo_id):
            folder = self._folder(repo_id)
            if name not in folder.shapes or folder.shapes[name] != self.base.shapes[name]:
                return None
            return folder.array(name) - self.base.array(name)
        factors = self._lora(repo_id).get(name)
        if factors is None:
            return None
        a, b, scale = factors
        return (b @ a) * scale

    def _folder(self, repo_id: str) -> ArrayFolder:
        if repo_id not in self._folders:
            self._folders[repo_id] = ArrayFolder.open(self.root / repo_id)
        return self._folders[repo_id]

    def _lora(self, repo_id: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        """Base weight name -> (A, B, scale) of an adapter's modules."""
        if repo_id not in self._loras:
            d = self.root / repo_id
            scaling = adapter.LoraScaling(json.loads((d / adapter.CONFIG).read_text()))
            tensors = read_file(d / adapter.WEIGHTS)
            out = {}
            for key, a in tensors.items():
                factor = adapter.split_key(key)
                if factor is None or factor[1] != "A":
                    continue
                module = factor[0]
                name = adapter.base_weight_name(module, self.base.shapes)
                if name is not None:
                    b = tensors[adapter.factor_key(module, "B")]
                    out[name] = (a, b, scaling.scale(module, rank=a.shape[0]))
            self._loras[repo_id] = out
        return self._loras[repo_id]


def kinship(weights: _LocalWeights, candidates: list[str], experts: list[str]) -> dict[str, float]:
    """Cosine of each candidate's task vector with the mean of the experts' (leave-one-out)."""
    dots = dict.fromkeys(candidates, 0.0)
    c_norm = dict.fromkeys(candidates, 0.0)
    m_norm = dict.fromkeys(candidates, 0.0)
    for name in weights.base.shapes:
        deltas = {r: weights.delta(r, name) for r in set(candidates) | set(experts)}
        expert_deltas = {r: deltas[r] for r in experts if deltas[r] is not None}
        total = sum(expert_deltas.values()) if expert_deltas else None
        for r in candidates:
            d = deltas[r]
            k = len(expert_deltas) - (r in expert_deltas)
            if total is None or k == 0:
                continue
            mean = (total - expert_deltas[r] if r in expert_deltas else total) / k
            if d is not None:
                dots[r] += float((d * mean).sum())
                c_norm[r] += float((d * d).sum())
            m_norm[r] += float((mean * mean).sum())
    return {r: dots[r] / math.sqrt(c_norm[r] * m_norm[r]) for r in candidates if c_norm[r] > 0 and m_norm[r] > 0}


def _fingerprint(store_rows: dict[str, TensorFingerprint], repo_id: str) -> Fingerprint | None:
    row = store_rows.get(repo_id)
    return Fingerprint.from_row(row.kind, row.tensors) if row is not None else None


def alignment(store: Store, gradient_key: str, shas: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """The alignment component of each candidate probed at its current commit (``shas``) under the gradient."""
    probes = stored_probes(store, gradient_key)
    found = {rid: probes[(rid, sha)] for rid, sha in shas.items() if sha and (rid, sha) in probes}
    tasks = sorted({t for p in found.values() for t in p.cosines})
    best = {t: max(p.cosines.get(t, 0.0) for p in found.values()) for t in tasks}
    out = {}
    for rid, p in found.items():
        value = max((max(p.cosines.get(t, 0.0), 0.0) / best[t] for t in tasks if best[t] > 0), default=0.0)
        cos = ", ".join(f"{t} {c:+.3f}" for t, c in p.cosines.items())
        why = (f"FW LMO score at the base, cosine(-g, tau) per task: {cos}; from {len(p.tensors)} tensor(s), "
               f"{p.bytes_read} of {p.full_bytes} bytes in {p.calls} request(s)") if p.cosines else \
            f"no evidence: {p.error or 'nothing read'}"
        out[rid] = {"value": round(value, 4), "weight": WEIGHTS["alignment"], "why": why, "per_task": p.cosines,
                    "kind": p.kind, "tensors": p.tensors, "bytes_read": p.bytes_read, "full_bytes": p.full_bytes,
                    "calls": p.calls, "seconds": p.seconds, **({"error": p.error} if p.error else {})}
    return out


def _compatibility(paths: dict[str, tuple[str, int]], models: dict[str, Model], fps: dict[str, TensorFingerprint],
                   base: str, include_quantized: bool) -> dict[str, Compatibility]:
    base_fp = _fingerprint(fps, base)
    out = {}
    for rid, (rel, _) in paths.items():
        m = models.get(rid)
        quantized = rel == Relation.QUANTIZED or bool(m and m.is_quantized)
        out[rid] = compare(base_fp, _fingerprint(fps, rid), quantized=quantized, allow_quantized=include_quantized)
    return out


def score_target(store: Store, base: str, description: str, *, calib: Sequence[str] | None = None,
                 weights_dir: str | Path | None = None, include_quantized: bool = False,
                 gradient_key: str | None = None) -> list[Candidate]:
    """Score every descendant of ``base`` for ``description`` (and ``calib``, the calibration
    samples' prompts and responses; ``gradient_key``: the target's cached gradient, whose stored
    probes give the alignment, by default the one stored with the target); store and return them best first."""
    if not description.strip():
        raise ZooConfigError("--target: the task description is empty")
    query, calib_sha = description, None
    if calib:
        calib_text = "\n".join(calib)
        calib_sha = hashlib.sha256(calib_text.encode()).hexdigest()
        query = f"{description}\n{calib_text}"
    paths = descendants(store, base)
    if not paths:
        raise ZooConfigError(f"no crawled descendants of {base!r} in the store; run `mergekit-from zoo crawl --base "
                             f"{base}` first")
    with store.session() as s:
        models = {m.repo_id: m for m in s.scalars(select(Model).where(Model.repo_id.in_([*paths, base])))}
        fps = {f.repo_id: f for f in s.scalars(select(TensorFingerprint).where(
            TensorFingerprint.repo_id.in_([*paths, base])))}
        adapters = {a.repo_id for a in s.scalars(select(AdapterConfig))}
    compat = _compatibility(paths, models, fps, base, include_quantized)
    cosines = _tfidf_cosines(query, {rid: _doc(models[rid]) for rid in paths if rid in models})
    # Relative to the best match in the pool; the floor keeps a pool of non-matches near zero.
    text_scale = max(max(cosines.values(), default=0.0), TEXT_FLOOR)
    text = {rid: v / text_scale for rid, v in cosines.items()}
    pops = {rid: math.log1p((models[rid].downloads or 0)) + 0.5 * math.log1p(models[rid].likes or 0)
            for rid in paths if rid in models}
    max_pop = max(pops.values(), default=0.0) or 1.0

    kin: dict[str, float] = {}
    if weights_dir is not None:
        local = _LocalWeights(Path(weights_dir), base)
        usable = [r for r in paths if compat[r].compatible and local.has(r)]
        experts = sorted(usable, key=lambda r: -text.get(r, 0.0))[:N_EXPERTS]
        if local.base is not None and len(experts) >= 2:
            kin = kinship(local, usable, experts)

    tid = target_id(base, description, calib_sha)
    gradient_key = gradient_key or _stored_gradient(store, tid)
    aligned = alignment(store, gradient_key, {r: models[r].sha for r in paths if r in models}) if gradient_key else {}
    out = []
    for rid, (rel, hops) in paths.items():
        c = compat[rid]
        comps: dict[str, Any] = {
            "relation": {"value": RELATION_PRIOR.get(rel, 0.5) * HOP_DECAY ** (hops - 1), "weight": WEIGHTS["relation"],
                         "why": f"{rel} of the base, {hops} hop(s) away"},
            "text": {"value": round(text.get(rid, 0.0), 4), "weight": WEIGHTS["text"],
                     "why": f"TF-IDF cosine {cosines.get(rid, 0.0):.3f} of card, tags, datasets and name with the "
                            "target description" + (" and calibration data" if calib_sha else "")
                            + " (scaled by the pool's best)"},
            "popularity": {"value": round(pops.get(rid, 0.0) / max_pop, 4), "weight": WEIGHTS["popularity"],
                           "why": f"{(models[rid].downloads or 0) if rid in models else 0} downloads, "
                                  f"{(models[rid].likes or 0) if rid in models else 0} likes"},
        }
        if rid in aligned:
            comps["alignment"] = aligned[rid]
        if rid in kin:
            comps["kinship"] = {"value": round(max(kin[rid], 0.0), 4), "weight": WEIGHTS["kinship"],
                                "why": f"task-vector cosine {kin[rid]:+.3f} with the mean of the top text matches"}
        total_w = sum(v["weight"] for v in comps.values())
        mean = sum(v["value"] * v["weight"] for v in comps.values()) / total_w
        gate = 1.0 if c.compatible else 0.5 if c.compatible is None else 0.0
        comps["compatibility"] = {"value": gate, "weight": "gate", "why": c.reason,
                                  **({"vocab_mismatch": True} if c.vocab_mismatch else {})}
        if rid in adapters:
            comps["relation"]["why"] += " (LoRA adapter)"
        m = models.get(rid)
        if m is not None and m.status in (Status.GATED, Status.MISSING, Status.ERROR):
            comps["access"] = {"value": m.status, "weight": "info", "why": m.error or m.status}
        out.append(Candidate(rid, rel, hops, round(gate * mean, 6), c.compatible, comps, tid))
    out.sort(key=lambda c: (-c.score, c.repo_id))
    _store(store, tid, base, description, calib_sha, gradient_key, out)
    return out


def _stored_gradient(store: Store, tid: str) -> str | None:
    """The gradient an earlier run (``auto`` with --calib) took for this target, whose probes still count."""
    with store.session() as s:
        row = s.get(Target, tid)
        return row.gradient_key if row is not None else None


def target_id(base: str, description: str, calib_sha: str | None) -> str:
    return hashlib.sha256(f"{base}\n{description}\n{calib_sha or ''}".encode()).hexdigest()[:16]


def _store(store: Store, tid: str, base: str, description: str, calib_sha: str | None, gradient_key: str | None,
           cands: list[Candidate]) -> None:
    with store.session() as s:
        store.upsert(s, Target, [{"target_id": tid, "base_id": base, "description": description,
                                  "calib_sha": calib_sha, "gradient_key": gradient_key}])
        s.query(Score).filter(Score.target_id == tid).delete()
        store.upsert(s, Score, [{"target_id": tid, "repo_id": c.repo_id, "score": c.score,
                                 "compatible": c.compatible, "components": c.components,
                                 "scorer_version": SCORER_VERSION} for c in cands])
