"""Open the zoo's database, migrate it to the newest schema, and upsert rows idempotently."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Base
from db.paths import cache_root

MIGRATIONS = "db:migrations"  # package-resource form: works from an installed wheel too


class StoreError(Exception):
    """The store cannot be opened: a malformed URL, a corrupt file, a place that cannot be written."""

    exit_code = 2  # a user error: the CLI prints this one line and exits 2


def default_url() -> str:
    """``$MERGEKIT_FROM_ZOO_DB``, else SQLite in the per-user cache (``$XDG_CACHE_HOME`` honoured)."""
    if os.environ.get("MERGEKIT_FROM_ZOO_DB"):
        return os.environ["MERGEKIT_FROM_ZOO_DB"]
    return f"sqlite:///{cache_root() / 'zoo.sqlite'}"


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer: orjson is several times faster than ``json.dumps`` on the
    small values a listing page writes thousands of (it writes NaN as null, as JSON requires)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses (integers over 64 bits, other types): the stdlib's answer
        return json.dumps(value)


def _enable_wal(cur, patience_s: float = 60.0) -> None:  # noqa: ANN001 - DB-API cursor
    """Switch a database to WAL. The switch needs an exclusive lock, and SQLite answers "database is
    locked" at once, without the busy handler, while another process (a second crawler creating the
    same store) holds one: retry until the patience runs out."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        folder = Path(path).expanduser().parent
        if folder == cache_root():  # ours to create; a folder the user named that is not there is a typo
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise StoreError(f"cannot open the store {path}: no folder {folder}")
    engine = create_engine(url, connect_args={"timeout": 60}, json_serializer=json_dumps)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001 - DB-API connection
        # SQLAlchemy emits BEGIN itself (below); the driver's implicit transactions would defeat it.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        _enable_wal(cur)
        # Under WAL, NORMAL syncs at checkpoints, not at every commit: a committed page survives a
        # killed process (it is in the WAL file); only power loss or an OS crash may drop the last
        # commits, and never leaves the database corrupt.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # IMMEDIATE takes the write lock up front: two crawlers then queue on busy_timeout instead
        # of one failing with SQLITE_BUSY when its read snapshot turns stale mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (a no-op, without the write lock, when it is there)."""
    cfg = _alembic_config()
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """An engine, a session factory and the upsert every writer goes through."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error."""
        with self._sessions.begin() as s:
            yield s

    def upsert(self, session: Session, model: type[Base], rows: Iterable[dict[str, Any]]) -> int:
        """Insert rows, or update the given columns of rows whose primary key exists.

        Only the keys present in a row are written, so a sparse listing row never blanks what
        ``model_info`` filled in earlier. Rows are grouped by their keys, in order, for executemany
        (rows built by one function share an order; sorting each row's keys cost more than
        the rare extra statement for a reordered twin).
        """
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        table = model.__table__
        pk = [c.name for c in table.primary_key.columns]
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # portable, slower path
            for group in groups.values():
                for row in group:
                    session.merge(model(**row))
            return sum(len(g) for g in groups.values())
        for keys, group in groups.items():
            stmt = insert(table)
            update = {k: stmt.excluded[k] for k in keys if k not in pk}
            stmt = stmt.on_conflict_do_update(index_elements=pk, set_=update) if update \
                else stmt.on_conflict_do_nothing(index_elements=pk)
            session.execute(stmt, group)
        return sum(len(g) for g in groups.values())

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def close(self) -> None:
        self.engine.dispose()


def _where(url: URL) -> str:
    """The store as a user named it: the file of a SQLite store, else the URL without its password."""
    return url.database if url.get_backend_name() == "sqlite" and url.database else \
        url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The driver's own words when there are some ("file is not a database"), on one line."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__


def open_store(url: str | None = None) -> Store:
    """Open (creating if needed) the store at ``url`` and migrate it to the newest schema; a store
    that cannot be opened is a :class:`StoreError` naming it."""
    url = url or default_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"--db {url!r} is not a database URL (e.g. sqlite:///zoo.sqlite)") from None
    backend = parsed.get_backend_name()
    engine = None
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(url)
        else:  # not every dialect takes a JSON serializer (the two that upsert natively do)
            engine = create_engine(url, **({"json_serializer": json_dumps} if backend == "postgresql" else {}))
        upgrade(engine)
    except (SQLAlchemyError, CommandError, OSError, ImportError) as exc:
        if engine is not None:
            engine.dispose()
        raise StoreError(f"cannot open the store {_where(parsed)}: {_reason(exc)}") from None
    return Store(engine)
