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


@pytest.fixture(scope="session")
def _crawled_file(zoo_dir, tmp_path_factory) -> Path:
    """One full recursive crawl of the zoo, done once; tests get copies."""
    from db import open_store
    from zoo.crawler import Crawler
    from zoo.hub_server import HubServer

    tmp = tmp_path_factory.mktemp("crawled")
    with HubServer(zoo_dir, page_size=3, gated={GATED: "manual"}) as server:
        store = open_store(f"sqlite:///{tmp / 'zoo.sqlite'}")
        Crawler(store, server.endpoint, token=False, cache_dir=tmp / "hf-cache", progress=False).crawl_tree(
            "acme/tiny-llama", recursive=True)
        store.close()  # the last connection checkpoints the WAL into the main file
    return tmp / "zoo.sqlite"


@pytest.fixture
def crawled(_crawled_file, tmp_path):
    """A store holding the crawled zoo (a private copy)."""
    import shutil

    from db import open_store

    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{_crawled_file}{suffix}")
        if src.exists():
            shutil.copy(src, tmp_path / f"crawled.sqlite{suffix}")
    s = open_store(f"sqlite:///{tmp_path / 'crawled.sqlite'}")
    yield s
    s.close()
