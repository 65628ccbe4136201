"""The store's closed vocabularies: how a repo relates to its parent, where crawling it got, how a merge run ended."""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A member is its string: it compares, hashes, formats and is stored as its value."""

    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__


class Relation(_Word):
    """The Hub's ``base_model:<relation>:<parent>`` tag kinds."""

    FINETUNE = "finetune"
    ADAPTER = "adapter"
    MERGE = "merge"
    QUANTIZED = "quantized"


RELATIONS = tuple(r.value for r in Relation)


class Status(_Word):
    """A model row's crawl state: listed, then enriched, or why enrichment could not finish."""

    LISTED = "listed"
    ENRICHED = "enriched"
    GATED = "gated"
    MISSING = "missing"
    ERROR = "error"


class RunStatus(_Word):
    """A merge run's state."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
