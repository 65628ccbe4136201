"""Shared fixtures: a folder of tiny HF model folders, a local Hub serving it, a fresh store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zoo_fixtures import GATED, build_zoo  # noqa: E402


@pytest.fixture(scope="session")
def _built_zoo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


@pytest.fixture(scope="session")
def zoo_dir(_built_zoo) -> Path:
    return _built_zoo[0]


@pytest.fixture(scope="session")
def zoo_layout(_built_zoo) -> dict[str, str]:
    """{repo_id: relation to its parent, or "base"}."""
    return _built_zoo[1]


@pytest.fixture
def hub(zoo_dir):
    from zoo.hub_server import HubServer

    with HubServer(zoo_dir, page_size=3, gated={GATED: "manual"}) as server:
        yield server


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'zoo.sqlite'}"


@pytest.fixture
def store(db_url):
    from db import open_store

    s = open_store(db_url)
    yield s
    s.close()


@pytest.fixture
def make_crawler(store, hub, tmp_path):
    """Crawlers against the local Hub, no token, an isolated file cache, quick backoff."""
    from zoo.crawler import Crawler
    from zoo.resilience import RetryPolicy

    def make(**kw):
        kw.setdefault("retry", RetryPolicy(backoff_s=0.01))
        return Crawler(kw.pop("store", store), hub.endpoint, token=False, cache_dir=tmp_path / "hf-cache",
                       progress=False, **kw)

    return make
