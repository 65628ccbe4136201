"""Probes: how well each candidate aligns with a target's gradient, from a few ranged reads before any download.

FW-Merging's linear minimisation oracle scores a candidate by the alignment of its task vector with
the objective's gradient. A probe computes that score at the base, per target task, on a small
subset of tensors chosen once per target (:func:`choose_subset`): ``cosine(-g, tau)`` with
``tau = candidate - base``. A full fine-tune's subset is read with HTTP range requests through
``HfFileSystem`` (header, then the subset's byte ranges, coalesced); an adapter file is small and
read whole, and its alignment comes from its factors without forming ``B @ A``.

Every request goes through the crawler's retry policy (429 + ``RateLimit`` honoured, one pause
shared by the workers); a candidate costs at most :data:`MAX_CALLS` resolver requests. Results are
stored per (repo, commit, gradient key): a rerun probes only new or changed candidates.
"""

from __future__ import annotations

import json
import math
import statistics
import struct
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from huggingface_hub import HfFileSystem
from sqlalchemy import select
from tqdm.auto import tqdm

from db import AdapterConfig, Model, Probe, Store, WeightFile
from zoo import adapter
from zoo.arrays import INDEX, SINGLE, decode, parse
from zoo.gradient import TargetGradient
from zoo.layout import is_vocab_tensor
from zoo.resilience import RetryPolicy, Throttle, call_with_retry

DEFAULT_BUDGET = 0.02  # share of the model's bytes a probe may read
MAX_CALLS = 5  # resolver requests per candidate (the Hub's resolver limit is 5x its API limit)
WORKERS = 4

Subset = dict[str, int]  # tensor -> leading rows read (all of them for most tensors)


def choose_subset(mass: Mapping[str, Mapping[str, float]], nbytes: Mapping[str, int],
                  shapes: Mapping[str, list[int]], budget_bytes: int) -> Subset:
    """The tensors where the gradient carries the most mass per byte, within ``budget_bytes``.

    Only weight matrices outside the vocabulary are candidates: they are what fine-tunes change for a
    task and what adapters adapt (1-D norms are cheap but their drift says little of the task, and an
    embedding's rows are tokens, not a task). Measured on the quick task zoo at 2%: norms and
    embedding rows ranked the wrong expert first for one of two tasks; matrices ranked both right.

    Tasks are combined by each task's *share*: a tensor's value is the largest, over tasks, of its
    squared gradient norm divided by that task's total over those tensors, so a task whose gradient
    is small overall still brings its own heaviest tensors. Tensors are taken greedily by value per
    byte; one that does not fit whole is taken by its leading rows (a contiguous byte range), so
    the budget is spent and large matrices are probed even when none fits.
    """
    nbytes = {n: b for n, b in nbytes.items() if len(shapes[n]) == 2 and not is_vocab_tensor(n)}
    totals = {t: sum(m.get(n, 0.0) for n in nbytes) for t, m in mass.items()}
    value = {n: max((mass[t].get(n, 0.0) / totals[t] for t in mass if totals[t] > 0), default=0.0) for n in nbytes}
    order = sorted((n for n in nbytes if value[n] > 0 and nbytes[n] > 0), key=lambda n: -value[n] / nbytes[n])
    subset: Subset = {}
    left = budget_bytes
    for name in order:
        rows = shapes[name][0] if shapes[name] else 1
        row_bytes = nbytes[name] // rows
        take = min(rows, left // row_bytes) if row_bytes else 0
        if take > 0:
            subset[name] = take
            left -= take * row_bytes
        if left <= 0:
            break
    return subset


# -- alignment ------------------------------------------------------------------------------------


def model_cosines(grad: TargetGradient, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per task, cosine(-g, candidate - base) over the subset tensors in ``arrays``."""
    taus = {n: a.astype(np.float64) - grad.base_arrays[n] for n, a in arrays.items()}
    tau_sq = sum(float(np.vdot(t, t)) for t in taus.values())
    out = {}
    for task in grad.tasks:
        g = grad.grads[task]
        dot = sum(float(np.vdot(g[n], taus[n])) for n in taus)
        g_sq = sum(float(np.vdot(g[n], g[n])) for n in taus)
        out[task] = _cosine(-dot, g_sq, tau_sq)
    return out


def adapter_cosines(grad: TargetGradient, factors: Mapping[str, tuple[np.ndarray, np.ndarray, float]]
                    ) -> dict[str, float]:
    """Per task, cosine(-g, s·B·A) over the whole subset from the factors (``{base tensor: (A, B, s)}``):
    ``<G, sBA> = s·sum((BᵀG) ∘ A)`` and ``‖sBA‖² = s²·sum((BᵀB) ∘ (AAᵀ))``, never forming B·A."""
    used = {n: f for n, f in factors.items() if n in grad.subset}
    tau_sq = 0.0
    for n, (a, b, s) in used.items():
        b = b[: grad.subset[n]].astype(np.float64)
        tau_sq += s * s * float(np.sum((b.T @ b) * (a @ a.T)))
    out = {}
    for task in grad.tasks:
        g = grad.grads[task]
        dot = sum(s * float(np.sum((b[: grad.subset[n]].T @ g[n]) * a)) for n, (a, b, s) in used.items())
        g_sq = sum(float(np.vdot(g[n], g[n])) for n in grad.subset)
        out[task] = _cosine(-dot, g_sq, tau_sq)
    return out


def _cosine(dot: float, a_sq: float, b_sq: float) -> float:
    denom = math.sqrt(a_sq * b_sq)
    return round(dot / denom, 6) if denom > 0 else 0.0


def lora_factors(config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                 base_names: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Base tensor name -> (A, B, scale) of a PEFT LoRA adapter's modules (see :mod:`zoo.adapter`)."""
    names, scaling, out = set(base_names), adapter.LoraScaling(config), {}
    for key, a in tensors.items():
        factor = adapter.split_key(key)
        if factor is None or factor[1] != "A":
            continue
        name = adapter.base_weight_name(factor[0], names)
        b = tensors.get(adapter.factor_key(factor[0], "B"))
        if name is not None and b is not None:
            out[name] = (a.astype(np.float64), b.astype(np.float64), scaling.scale(factor[0], rank=a.shape[0]))
    return out


# -- ranged reads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeInput:
    """What a probe needs to know of a candidate, from the store: its commit, kind and weight files."""

    repo_id: str
    sha: str
    kind: str  # "model" or "adapter"
    files: tuple[str, ...] = ()
    adapter_config: dict[str, Any] | None = None


@dataclass
class _Reads:
    """Ranged reads of one candidate's files, counted, each through the retry policy."""

    fs: HfFileSystem
    candidate: ProbeInput
    retry: RetryPolicy
    throttle: Throttle
    calls: int = 0
    bytes_read: int = 0
    full_bytes: int = 0
    _open: dict[str, Any] = field(default_factory=dict)

    def _call(self, fn):  # noqa: ANN001, ANN202 - thin wrapper
        return call_with_retry(fn, self.retry, self.throttle)

    def _file(self, filename: str):  # noqa: ANN202 - an fsspec file
        if filename not in self._open:
            path = f"{self.candidate.repo_id}@{self.candidate.sha}/{filename}"
            f = self._call(lambda: self.fs.open(path, "rb", block_size=1, cache_type="none"))
            self._open[filename] = f
            self.full_bytes += f.size
        return self._open[filename]

    def read(self, filename: str, start: int, length: int | None = None) -> bytes:
        """``length`` bytes from ``start`` (None: to the end) in one resolver request."""
        f = self._file(filename)
        length = f.size - start if length is None else length

        def fetch() -> bytes:
            f.seek(start)
            return f.read(length)

        data = self._call(fetch)
        self.calls += 1
        self.bytes_read += len(data)
        return data

    def header(self, filename: str) -> tuple[int, dict[str, Any]]:
        """Where the file's tensor data starts, and its header: two small reads."""
        (n,) = struct.unpack("<Q", self.read(filename, 0, 8))
        return 8 + n, json.loads(self.read(filename, 8, n))

    def close(self) -> None:
        for f in self._open.values():
            f.close()


def _spans(entries: list[tuple[str, int, int]], slots: int) -> list[tuple[int, int, list[str]]]:
    """(start, end, tensors) byte ranges: adjacent entries coalesced, then the first ``slots`` in subset order."""
    merged: list[tuple[int, int, list[str]]] = []
    for name, start, end in sorted(entries, key=lambda e: e[1]):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end, [*merged[-1][2], name])
        else:
            merged.append((start, end, [name]))
    rank = {name: i for i, (name, _, _) in enumerate(entries)}
    return sorted(merged, key=lambda m: min(rank[n] for n in m[2]))[:slots]


def read_subset(reads: _Reads, grad: TargetGradient) -> dict[str, np.ndarray]:
    """The subset's rows of a full model, within :data:`MAX_CALLS` requests (a shard index costs one)."""
    files = reads.candidate.files
    weight_map = {n: SINGLE for n in grad.subset}
    if SINGLE not in files and INDEX in files:
        weight_map = json.loads(reads.read(INDEX, 0))["weight_map"]
    arrays: dict[str, np.ndarray] = {}
    for filename in dict.fromkeys(weight_map[n] for n in grad.subset if n in weight_map):
        if reads.calls + 3 > MAX_CALLS:  # a header (two reads) and at least one range
            break
        data_start, header = reads.header(filename)
        entries = []
        for name in grad.subset:
            info = header.get(name)
            if weight_map.get(name) != filename or info is None or list(info["shape"]) != grad.shapes[name]:
                continue
            start, end = info["data_offsets"]
            rows = grad.shapes[name][0] if grad.shapes[name] else 1
            entries.append((name, data_start + start, data_start + start + (end - start) // rows * grad.subset[name]))
        for start, end, names in _spans(entries, MAX_CALLS - reads.calls):
            blob = memoryview(reads.read(filename, start, end - start))
            for name in names:
                _, s, e = next(x for x in entries if x[0] == name)
                info = {**header[name], "shape": [grad.subset[name], *grad.shapes[name][1:]]}
                arrays[name] = decode(info, blob[s - start : e - start])
    return arrays


# -- probing and the store ------------------------------------------------------------------------


def _probe_one(fs: HfFileSystem, grad: TargetGradient, cand: ProbeInput, retry: RetryPolicy,
               throttle: Throttle) -> dict[str, Any]:
    started = time.perf_counter()
    reads = _Reads(fs, cand, retry, throttle)
    cosines: dict[str, float] = {}
    tensors: list[str] = []
    error = None
    try:
        if cand.kind == "adapter":
            factors = lora_factors(cand.adapter_config or {}, parse(reads.read(adapter.WEIGHTS, 0)), grad.shapes)
            cosines, tensors = adapter_cosines(grad, factors), sorted(set(factors) & set(grad.subset))
        else:
            arrays = read_subset(reads, grad)
            cosines, tensors = model_cosines(grad, arrays), sorted(arrays)
        if not tensors:
            error = "none of the probe's tensors are in its weights"
    except Exception as exc:  # noqa: BLE001 - recorded: a probe that fails is no evidence, not a crash
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    finally:
        reads.close()
    return {"repo_id": cand.repo_id, "sha": cand.sha, "gradient_key": grad.key, "kind": cand.kind,
            "cosines": cosines if tensors else {}, "tensors": tensors, "bytes_read": reads.bytes_read,
            "full_bytes": reads.full_bytes or None, "calls": reads.calls,
            "seconds": round(time.perf_counter() - started, 4), "error": error}


def candidates(store: Store, repo_ids: Iterable[str]) -> list[ProbeInput]:
    """The store's view of ``repo_ids`` as probe candidates (those with a known commit)."""
    ids = list(repo_ids)
    with store.session() as s:
        models = {m.repo_id: m for m in s.scalars(select(Model).where(Model.repo_id.in_(ids)))}
        files: dict[str, list[str]] = {}
        for w in s.scalars(select(WeightFile).where(WeightFile.repo_id.in_(ids))):
            files.setdefault(w.repo_id, []).append(w.filename)
        configs = {a.repo_id: a.raw for a in s.scalars(select(AdapterConfig).where(AdapterConfig.repo_id.in_(ids)))}
    out = []
    for rid in ids:
        m = models.get(rid)
        if m is None or not m.sha:
            continue
        kind = "adapter" if m.is_adapter else "model"
        names = tuple(sorted(files.get(rid, ())))
        out.append(ProbeInput(rid, m.sha, kind, names + ((INDEX,) if len(names) > 1 else ()), configs.get(rid)))
    return out


@dataclass
class ProbeReport:
    probed: int
    reused: int
    seconds: float
    rows: list[dict[str, Any]]  # this run's probes (the reused ones are in the store)

    def summary(self) -> dict[str, Any]:
        """What this run read before downloading: the one account the CLI, the demo and the benchmark print.

        Per candidate, as the probe counted it: bytes read against its weights' size and resolver
        requests (the safetensors header and ranged reads, or an adapter file read whole). The byte shares
        are the full models' (an adapter is read whole, by design). ``HfFileSystem``'s API calls (the
        revision and file listing) are API calls, not resolver calls: not counted here."""
        share = [r["bytes_read"] / r["full_bytes"] for r in self.rows if r["full_bytes"] and r["kind"] == "model"]
        calls = [r["calls"] for r in self.rows]
        kinds = [r["kind"] for r in self.rows]
        return {"probed": self.probed, "reused": self.reused, "seconds": round(self.seconds, 3),
                "adapters": kinds.count("adapter"), "errors": sum(r["error"] is not None for r in self.rows),
                "bytes_read": sum(r["bytes_read"] for r in self.rows),
                "full_bytes": sum(r["full_bytes"] or 0 for r in self.rows),
                "share_median": statistics.median(share) if share else 0.0, "share_max": max(share, default=0.0),
                "calls_median": statistics.median(calls) if calls else 0, "calls_max": max(calls, default=0)}


def probe(store: Store, grad: TargetGradient, endpoint: str | None, cands: list[ProbeInput], *,
          token: str | bool | None = None, workers: int = WORKERS, retry: RetryPolicy | None = None,
          progress: bool = False) -> ProbeReport:
    """Probe the candidates the store has no result for at their commit, ``workers`` at a time; store them."""
    started = time.perf_counter()
    with store.session() as s:
        done = set(s.execute(select(Probe.repo_id, Probe.sha).where(Probe.gradient_key == grad.key)).all())
    todo = [c for c in cands if (c.repo_id, c.sha) not in done]
    fs = HfFileSystem(endpoint=endpoint, token=token)
    policy, throttle = retry or RetryPolicy(), Throttle()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = pool.map(lambda c: _probe_one(fs, grad, c, policy, throttle), todo)
        rows = list(tqdm(jobs, total=len(todo), desc="probing candidates", unit="model", disable=not progress))
    if rows:
        with store.session() as s:
            store.upsert(s, Probe, rows)
    return ProbeReport(len(todo), len(cands) - len(todo), time.perf_counter() - started, rows)


def stored_probes(store: Store, gradient_key: str) -> dict[tuple[str, str], Probe]:
    """(repo, commit) -> the stored probe under ``gradient_key``."""
    with store.session() as s:
        return {(p.repo_id, p.sha): p for p in s.scalars(select(Probe).where(Probe.gradient_key == gradient_key))}
