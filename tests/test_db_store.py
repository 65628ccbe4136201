"""The store: migrations shipped in the package, WAL SQLite, idempotent upserts, every table usable;
on SQLite and on PostgreSQL (a throwaway server on 127.0.0.1)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, make_url, select, text

from db import Edge, MergeRun, Model, Score, Target, default_url, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, db_url) -> str:
    """Each store test runs on both backends (a fresh database each time): conftest's SQLite file, or
    a new database on the throwaway PostgreSQL server."""
    return db_url if request.param == "sqlite" else request.getfixturevalue("postgres").database()


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def test_open_migrates_to_head_and_reopen_is_a_noop(db_url):
    from alembic.script import ScriptDirectory

    from db.store import _alembic_config

    store = open_store(db_url)
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with store.engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == head
        if _is_sqlite(db_url):
            assert c.execute(text("pragma journal_mode")).scalar() == "wal"
    assert {"models", "edges", "weight_files", "tensor_fingerprints", "adapter_configs", "targets", "scores",
            "crawl_state", "merge_runs"} <= set(store.table_names())
    store.close()
    again = open_store(db_url)  # already at head
    with again.engine.connect() as c:
        assert c.execute(text("select count(*) from alembic_version")).scalar() == 1
    again.close()


def test_upgrade_from_first_migration_keeps_rows(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    from db.store import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("insert into models (repo_id, is_adapter, is_quantized, status, first_seen_at, updated_at)"
                          " values ('a/b', 0, 0, 'listed', '2026-01-01', '2026-01-01')"))
    engine.dispose()
    store = open_store(url)
    with store.session() as s:
        m = s.get(Model, "a/b")
        assert m is not None and m.card_text is None
    store.close()


def test_upserts_are_idempotent_and_sparse_rows_do_not_blank_columns(store):
    rows = [{"repo_id": f"org/m{i}", "sha": f"{i:040d}", "downloads": i, "tags": ["a", f"t{i}"]} for i in range(50)]
    edges = [{"child_id": f"org/m{i}", "parent_id": "org/base", "relation": "finetune", "source": "tag"}
             for i in range(50)]
    for _ in range(3):
        with store.session() as s:
            store.upsert(s, Model, rows)
            store.upsert(s, Edge, edges)
    with store.session() as s:
        store.upsert(s, Model, [{"repo_id": "org/m7", "likes": 3}])  # a listing with fewer fields
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 50
        assert s.scalar(select(func.count()).select_from(Edge)) == 50
        m7 = s.get(Model, "org/m7")
        assert (m7.sha, m7.downloads, m7.likes, m7.tags) == (f"{7:040d}", 7, 3, ["a", "t7"])


def test_targets_scores_and_merge_runs_round_trip(store):
    with store.session() as s:
        store.upsert(s, Target, [{"target_id": "t1", "base_id": "org/base", "description": "math"}])
        store.upsert(s, Score, [{"target_id": "t1", "repo_id": "org/m1", "score": 0.5, "compatible": True,
                                 "components": {"text": {"value": 0.5}}, "scorer_version": "1"}])
        s.add(MergeRun(target_id="t1", method="fw", inputs={"base": "org/base"}, pool=["org/m1", "org/m2"],
                       picks=["org/m1"], output="out/merged"))
    with store.session() as s:
        run = s.scalars(select(MergeRun)).one()
        assert (run.status, run.pool, run.picks) == ("running", ["org/m1", "org/m2"], ["org/m1"])
        assert s.get(Score, ("t1", "org/m1")).components == {"text": {"value": 0.5}}


def test_default_url_is_per_user_cache_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("MERGEKIT_FROM_ZOO_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/mergekit-from/zoo.sqlite"
    monkeypatch.setenv("MERGEKIT_FROM_ZOO_DB", "sqlite:///elsewhere.sqlite")
    assert default_url() == "sqlite:///elsewhere.sqlite"


def test_json_columns_round_trip_what_json_dumps_took(store, db_url):
    # orjson writes the columns; what it refuses (integers past 64 bits) goes through json.dumps.
    card = {"language": ["日本語", "français"], "widget": [{"text": "a\nb"}], "n": 2**70, "ok": True}
    with store.session() as s:
        store.upsert(s, Model, [{"repo_id": "org/m", "card_data": card, "config": {1: "int key"}}])
    with store.session() as s:
        m = s.get(Model, "org/m")
        assert m.card_data == card
        assert m.config == {"1": "int key"}  # as json.dumps writes non-string keys
    query = ("select json_extract(card_data, '$.language[0]') from models" if _is_sqlite(db_url)
             else "select card_data->'language'->>0 from models")
    with store.engine.connect() as c:  # valid JSON for the database's own functions too
        assert c.execute(text(query)).scalar() == "日本語"


def test_datetimes_come_back_aware_in_utc(store):
    # SQLite keeps no offset: a +02:00 time must be stored as UTC, not as its wall-clock reading
    when = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    with store.session() as s:
        store.upsert(s, Model, [{"repo_id": "org/m", "last_modified": when, "created_at": datetime(2026, 1, 1)}])
    with store.session() as s:
        m = s.get(Model, "org/m")
        assert m.last_modified == when and m.last_modified.tzinfo == timezone.utc and m.last_modified.hour == 3
        assert m.created_at == datetime(2026, 1, 1, tzinfo=timezone.utc)  # naive input is taken as UTC
        assert m.updated_at.tzinfo == timezone.utc


def test_upsert_groups_rows_with_the_same_keys_in_another_order(store):
    rows = [{"repo_id": "org/a", "likes": 1, "downloads": 10}, {"downloads": 20, "repo_id": "org/b", "likes": 2},
            {"repo_id": "org/c", "likes": 3}]
    with store.session() as s:
        assert store.upsert(s, Model, rows) == 3
        store.upsert(s, Model, [{"likes": 5, "repo_id": "org/a"}])  # sparse: downloads stays
    with store.session() as s:
        got = {m.repo_id: (m.likes, m.downloads) for m in s.scalars(select(Model))}
    assert got == {"org/a": (5, 10), "org/b": (2, 20), "org/c": (3, None)}


@pytest.mark.postgres
def test_a_crawl_into_postgres_stores_what_sqlite_stores(postgres, hub, crawled, tmp_path):
    from zoo.crawler import Crawler
    from zoo.inventory import inventory
    from zoo.scoring import score_target

    store = open_store(postgres.database())
    Crawler(store, hub.endpoint, token=False, cache_dir=tmp_path / "hf-cache", progress=False).crawl_tree(
        "acme/tiny-llama", recursive=True)
    rows, expected = inventory(store), inventory(crawled)
    assert len(rows) == len(expected) > 5
    diff = [(a["repo_id"], k, a[k], b[k]) for a, b in zip(rows, expected) for k in a if a[k] != b[k]]
    assert not diff, diff[:5]
    target = "solve grade school math word problems"
    got = [(c.repo_id, round(c.score, 6)) for c in score_target(store, "acme/tiny-llama", target)]
    assert got == [(c.repo_id, round(c.score, 6)) for c in score_target(crawled, "acme/tiny-llama", target)]
    store.close()


def test_migrations_build_exactly_the_models_schema(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
