"""What the store knows, one flat record per model (for ``zoo ls`` and ``zoo export``)."""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import select

from db import Edge, Model, Store, TensorFingerprint
from zoo.fingerprint import Fingerprint, compare

FIELDS = ("repo_id", "sha", "relation", "parent", "compatible", "compat_reason", "gated", "status", "is_adapter",
          "is_quantized", "vocab_size", "n_params", "library_name", "pipeline_tag", "downloads", "likes",
          "last_modified", "error")


def inventory(store: Store, base: str | None = None) -> list[dict[str, Any]]:
    """Every model with its (first) parent edge, and compatibility with ``base`` (else with its parent)."""
    with store.session() as s:
        models = list(s.scalars(select(Model).order_by(Model.repo_id)))
        edges: dict[str, Edge] = {}
        for e in s.scalars(select(Edge).order_by(Edge.child_id, Edge.source.desc(), Edge.parent_id)):
            edges.setdefault(e.child_id, e)  # "tag" edges win over "card" / "adapter_config" ones
        fps = {f.repo_id: Fingerprint.from_row(f.kind, f.tensors) for f in s.scalars(select(TensorFingerprint))}
        n_params = {f.repo_id: f.n_params for f in s.scalars(select(TensorFingerprint))}
    out = []
    for m in models:
        edge = edges.get(m.repo_id)
        ref = base or (edge.parent_id if edge else None)
        compat = None
        if ref is not None and ref != m.repo_id:
            compat = compare(fps.get(ref), fps.get(m.repo_id), quantized=m.is_quantized)
        out.append({
            "repo_id": m.repo_id, "sha": m.sha, "relation": edge.relation if edge else None,
            "parent": edge.parent_id if edge else None,
            "compatible": compat.compatible if compat else None, "compat_reason": compat.reason if compat else None,
            "gated": m.gated, "status": m.status, "is_adapter": m.is_adapter, "is_quantized": m.is_quantized,
            "vocab_size": (m.config or {}).get("vocab_size"), "n_params": n_params.get(m.repo_id),
            "library_name": m.library_name, "pipeline_tag": m.pipeline_tag, "downloads": m.downloads,
            "likes": m.likes, "last_modified": m.last_modified.isoformat() if m.last_modified else None,
            "error": m.error,
        })
    return out


def descendants(store: Store, base: str, relations: Iterable[str] | None = None) -> dict[str, tuple[str, int]]:
    """Every descendant of ``base`` through edges of ``relations`` (all when None): the relation of
    the edge that reached it first and its hops from the base, breadth first."""
    query = select(Edge.parent_id, Edge.child_id, Edge.relation)
    if relations is not None:
        query = query.where(Edge.relation.in_(tuple(relations)))
    with store.session() as s:
        rows = s.execute(query).all()
    children: dict[str, list[tuple[str, str]]] = {}
    for parent, child, rel in rows:
        children.setdefault(parent, []).append((child, rel))
    out: dict[str, tuple[str, int]] = {}
    frontier, hops = [base], 0
    while frontier:
        hops += 1
        nxt = []
        for parent in frontier:
            for child, rel in sorted(children.get(parent, ())):
                if child not in out and child != base:
                    out[child] = (rel, hops)
                    nxt.append(child)
        frontier = nxt
    return out
