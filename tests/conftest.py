"""Shared pytest fixtures: tiny Llama models on disk, the quick task zoo, tiny HF repos served by a
local Hub with a fresh zoo store, and PostgreSQL. The builders behind them are in ``tests/fixtures``."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import mergekit_from` does, before torch loads

import pytest  # noqa: E402

import mergekit_from  # noqa: F401, E402

from tests.fixtures.hub_repos import GATED, build_hub_repos  # noqa: E402
from tests.fixtures.models import make_finetune, make_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = make_llama(root / "base")
    return {
        "base": base,
        "a": make_finetune(base, root / "ft_a", 0.01, seed=1),
        "b": make_finetune(base, root / "ft_b", 0.03, seed=2),
        "c": make_finetune(base, root / "ft_c", 0.02, seed=3),
        "mlp_only": make_finetune(base, root / "ft_mlp", 0.02, seed=4, only="mlp"),
    }


@pytest.fixture(scope="session")
def quick_taskzoo(tmp_path_factory):
    """The quick task zoo, built once per test session (about 20 s on one core)."""
    from mergekit_from.taskzoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("taskzoo"), quick=True)


@pytest.fixture(scope="session")
def blind_auto(quick_taskzoo, tmp_path_factory):
    """Two `auto --method fw_soft --pool-size 8` runs for the tasks ends and maxchar against the quick zoo
    served blind (neutral ids, ``base_model:`` cards: ``mergekit_from.taskzoo.hub.ServedZoo``), the
    second reusing the store. ``truth``: repo id -> zoo model name; ``db``: the store's URL."""
    import json
    from types import SimpleNamespace

    from mergekit_from.taskzoo.hub import ServedZoo
    from tests.fixtures.models import run_cli
    from zoo.hub_server import HubServer

    tmp = tmp_path_factory.mktemp("blind-auto")
    served = ServedZoo(quick_taskzoo, tmp / "hub", blind=True)
    served.add_zoo_models()
    tasks = ("ends", "maxchar")
    calib = [a for t in tasks for a in ("--calib", f"{t}={quick_taskzoo.calibration(t)}")]
    db = f"sqlite:///{tmp / 'zoo.sqlite'}"
    with HubServer(tmp / "hub") as hub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))  # the gradient cache

        def auto(out):
            hub.requests.clear()
            r = run_cli("auto", "--base", served.base_id, "--target", "a model for two tasks", "--out", tmp / out,
                        "--endpoint", hub.endpoint, "--db", db, "--cache-dir", tmp / "hf-cache", *calib,
                        "--pool-size", "8", "--set", "max_iters=1", "--set", "ada_iters=2")
            assert r.exit_code == 0, r.stderr
            return SimpleNamespace(result=r, requests=list(hub.requests), out=tmp / out,
                                   run=json.loads((tmp / out / "auto_run.json").read_text()))

        yield SimpleNamespace(truth={rid: t["model"] for rid, t in served.truth.items()}, base=served.base_id,
                              tasks=tasks, db=db, first=auto("first"), second=auto("second"))


@pytest.fixture(scope="session")
def _built_hub_repos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hub")
    return root, build_hub_repos(root)


@pytest.fixture(scope="session")
def hub_dir(_built_hub_repos) -> Path:
    """The folder of tiny repos the local Hub serves (tests/fixtures/hub_repos.py)."""
    return _built_hub_repos[0]


@pytest.fixture(scope="session")
def hub_layout(_built_hub_repos) -> dict[str, str]:
    """{repo_id: relation to its parent, or "base"}."""
    return _built_hub_repos[1]


@pytest.fixture
def hub(hub_dir):
    from zoo.hub_server import HubServer

    with HubServer(hub_dir, page_size=3, gated={GATED: "manual"}) as server:
        yield server


@pytest.fixture
def twin_hub(hub_dir, tmp_path):
    """A Hub of the tiny base (with a tokenizer) and one "fine-tune" that is a byte copy of it: no
    candidate's task vector can align with any gradient."""
    import shutil

    from mergekit_from.card import write_card
    from mergekit_from.taskzoo.tokenizer import CharVocab
    from tests.fixtures.hub_repos import BASE
    from zoo.hub_server import HubServer

    root = tmp_path / "twin-hub"
    shutil.copytree(hub_dir / BASE, root / BASE)
    CharVocab().save(root / BASE)
    shutil.copytree(hub_dir / BASE, root / f"{BASE}-twin")
    write_card(root / f"{BASE}-twin", "# twin", base_model=BASE)
    with HubServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1; skipped where PostgreSQL is not installed, unless
    MERGEKIT_FROM_REQUIRE_POSTGRES=1 (set by .ci/run) makes that a failure."""
    from tests.fixtures.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("MERGEKIT_FROM_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (MERGEKIT_FROM_REQUIRE_POSTGRES=1) but initdb/pg_ctl are not installed")
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl)")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


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
        kw.setdefault("retry", RetryPolicy(floor_s=0.01))
        return Crawler(kw.pop("store", store), hub.endpoint, token=False, cache_dir=tmp_path / "hf-cache",
                       progress=False, **kw)

    return make


@pytest.fixture(scope="session")
def _crawled_file(hub_dir, tmp_path_factory) -> Path:
    """One full recursive crawl of the local Hub, done once; tests get copies."""
    from db import open_store
    from zoo.crawler import Crawler
    from zoo.hub_server import HubServer

    tmp = tmp_path_factory.mktemp("crawled")
    with HubServer(hub_dir, page_size=3, gated={GATED: "manual"}) as server:
        store = open_store(f"sqlite:///{tmp / 'zoo.sqlite'}")
        Crawler(store, server.endpoint, token=False, cache_dir=tmp / "hf-cache", progress=False).crawl_tree(
            "acme/tiny-llama", recursive=True)
        store.close()  # the last connection checkpoints the WAL into the main file
    return tmp / "zoo.sqlite"


@pytest.fixture
def crawled(_crawled_file, tmp_path):
    """A store holding the crawled Hub repos (a private copy)."""
    import shutil

    from db import open_store

    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{_crawled_file}{suffix}")
        if src.exists():
            shutil.copy(src, tmp_path / f"crawled.sqlite{suffix}")
    s = open_store(f"sqlite:///{tmp_path / 'crawled.sqlite'}")
    yield s
    s.close()
