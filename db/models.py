"""Tables of the model zoo.

Three kinds of facts are kept apart (as in "Model Lakes"): history (``Model`` metadata, ``Edge``),
intrinsic facts read from files (``WeightFile``, ``TensorFingerprint``, ``AdapterConfig``) keyed on
the commit ``sha`` they came from, and derived judgements (``Score`` per ``Target``, ``MergeRun``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Dialect, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from db.kinds import RunStatus, Status


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend: SQLite drops the offset on the way in (so convert to UTC
    first) and hands back naive values; PostgreSQL's timestamptz keeps it. Naive input is taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Model(Base):
    """One Hub repository as the listing / ``model_info`` describe it."""

    __tablename__ = "models"

    repo_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    last_modified: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime | None] = mapped_column()
    author: Mapped[str | None] = mapped_column(String(128))
    library_name: Mapped[str | None] = mapped_column(String(64))
    pipeline_tag: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[Any] | None]
    card_data: Mapped[dict[str, Any] | None]
    card_text: Mapped[str | None] = mapped_column(Text)  # README body (no YAML), capped
    datasets: Mapped[list[Any] | None]
    license: Mapped[str | None] = mapped_column(String(64))
    gated: Mapped[str | None] = mapped_column(String(16))  # None, "auto" or "manual"
    private: Mapped[bool | None] = mapped_column(Boolean)
    downloads: Mapped[int | None] = mapped_column(Integer)
    likes: Mapped[int | None] = mapped_column(Integer)
    # architectures, model_type, vocab/hidden sizes, quantization method: what compatibility needs.
    config: Mapped[dict[str, Any] | None]
    is_adapter: Mapped[bool] = mapped_column(Boolean, default=False)
    is_quantized: Mapped[bool] = mapped_column(Boolean, default=False)
    # listed -> enriched; or gated / missing / error when enrichment could not finish.
    status: Mapped[str] = mapped_column(String(16), default=Status.LISTED.value)
    error: Mapped[str | None] = mapped_column(Text)
    enriched_sha: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Edge(Base):
    """A model-tree edge; the same edge may be observed from several sources."""

    __tablename__ = "edges"

    child_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    parent_id: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    relation: Mapped[str] = mapped_column(String(16), primary_key=True)  # a Relation
    source: Mapped[str] = mapped_column(String(32), primary_key=True)  # tag|card|adapter_config
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)


class WeightFile(Base):
    """A safetensors file of a repo at ``sha``, as its header describes it."""

    __tablename__ = "weight_files"

    repo_id: Mapped[str] = mapped_column(ForeignKey("models.repo_id", ondelete="CASCADE"), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512), primary_key=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    n_tensors: Mapped[int] = mapped_column(Integer)
    params_by_dtype: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


class TensorFingerprint(Base):
    """All tensors of a repo (names, shapes, dtypes) and hashes for fast equality.

    ``shape_hash`` covers names and shapes (dtype-free: bf16 and fp16 copies still merge);
    ``body_hash`` leaves out the vocabulary tensors, so equal bodies with different shape hashes
    mean a vocabulary mismatch rather than another architecture.
    """

    __tablename__ = "tensor_fingerprints"

    repo_id: Mapped[str] = mapped_column(ForeignKey("models.repo_id", ondelete="CASCADE"), primary_key=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "model" or "adapter"
    n_tensors: Mapped[int] = mapped_column(Integer)
    n_params: Mapped[int] = mapped_column(Integer)
    tensors: Mapped[list[Any]]  # [[name, dtype, [shape...]], ...] sorted by name
    shape_hash: Mapped[str] = mapped_column(String(64), index=True)
    body_hash: Mapped[str] = mapped_column(String(64), index=True)
    vocab_size: Mapped[int | None] = mapped_column(Integer)


class AdapterConfig(Base):
    """``adapter_config.json`` of a PEFT adapter."""

    __tablename__ = "adapter_configs"

    repo_id: Mapped[str] = mapped_column(ForeignKey("models.repo_id", ondelete="CASCADE"), primary_key=True)
    sha: Mapped[str | None] = mapped_column(String(64))
    peft_type: Mapped[str | None] = mapped_column(String(32))
    r: Mapped[int | None] = mapped_column(Integer)
    lora_alpha: Mapped[float | None] = mapped_column(Float)
    target_modules: Mapped[list[Any] | None]
    base_model_name_or_path: Mapped[str | None] = mapped_column(String(256))
    task_type: Mapped[str | None] = mapped_column(String(64))
    raw: Mapped[dict[str, Any]]


class Target(Base):
    """What a merge is for: a base and a free-text description (plus calibration data)."""

    __tablename__ = "targets"

    target_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hash of the fields below
    base_id: Mapped[str] = mapped_column(String(256), index=True)
    description: Mapped[str] = mapped_column(Text)
    calib_sha: Mapped[str | None] = mapped_column(String(64))
    # The cached FW gradient at the base the alignment scores came from (None: no calibration data).
    gradient_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Probe(Base):
    """A candidate's alignment with a target's gradient, from tensors read before any download.

    Keyed on the candidate's commit and the gradient's key, so a rerun probes only new or changed
    candidates; ``cosines`` is per target task, ``error`` says why a probe found nothing.
    """

    __tablename__ = "probes"

    repo_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    gradient_key: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "model" or "adapter"
    cosines: Mapped[dict[str, Any]]
    tensors: Mapped[list[Any]]  # the tensors the alignment covers
    bytes_read: Mapped[int] = mapped_column(Integer)
    full_bytes: Mapped[int | None] = mapped_column(Integer)  # the candidate's weights file(s)
    calls: Mapped[int] = mapped_column(Integer)  # resolver requests (ranged reads)
    seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    probed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Score(Base):
    """A candidate's relevance to a target, with each component and why."""

    __tablename__ = "scores"

    target_id: Mapped[str] = mapped_column(ForeignKey("targets.target_id", ondelete="CASCADE"), primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    compatible: Mapped[bool | None] = mapped_column(Boolean)
    components: Mapped[dict[str, Any]]
    scorer_version: Mapped[str] = mapped_column(String(16))
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrawlState(Base):
    """Where a listing query stands: the saved next-page URL is what a killed crawl resumes from."""

    __tablename__ = "crawl_state"

    query_key: Mapped[str] = mapped_column(String(64), primary_key=True)  # hash of endpoint + params
    endpoint: Mapped[str] = mapped_column(String(512))
    params: Mapped[dict[str, Any]]
    next_url: Mapped[str | None] = mapped_column(Text)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    items_done: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MergeRun(Base):
    """One auto-merge: what it was asked, the pool it saw, what it picked and what it wrote."""

    __tablename__ = "merge_runs"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[str | None] = mapped_column(ForeignKey("targets.target_id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING.value)
    inputs: Mapped[dict[str, Any]]
    pool: Mapped[list[Any]]
    picks: Mapped[list[Any] | None]
    output: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
