"""The zoo's store: SQLAlchemy 2 models, Alembic migrations shipped in the package, idempotent upserts.

``open_store(url)`` returns a :class:`Store` on any SQLAlchemy URL (SQLite by default, at a per-user
cache path, in WAL mode) after upgrading its schema to the newest migration.
"""

from db.models import (
    AdapterConfig,
    Base,
    CrawlState,
    Edge,
    MergeRun,
    Model,
    Probe,
    Score,
    Target,
    TensorFingerprint,
    WeightFile,
)
from db.store import Store, StoreError, default_url, open_store

__all__ = [
    "AdapterConfig",
    "Base",
    "CrawlState",
    "Edge",
    "MergeRun",
    "Model",
    "Probe",
    "Score",
    "Store",
    "StoreError",
    "Target",
    "TensorFingerprint",
    "WeightFile",
    "default_url",
    "open_store",
]
