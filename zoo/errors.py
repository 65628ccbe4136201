"""The zoo's user errors: each carries the exit code the CLI ends with, as ``mergekit_from.errors`` reads it."""

from __future__ import annotations


class ZooError(Exception):
    """A problem with the user's input, store or Hub, not a bug: the CLI prints one line and exits 2."""

    exit_code = 2


class ZooConfigError(ZooError):
    """A zoo option is invalid (an unknown relation, an empty description) or the store lacks what it needs."""


class HubAccessError(ZooError):
    """The Hub cannot be asked as requested: a malformed or unreachable endpoint, an unknown repo."""


class HubCrawlError(ZooError):
    """A Hub listing kept failing after retries; the crawl state is saved and a rerun resumes."""
