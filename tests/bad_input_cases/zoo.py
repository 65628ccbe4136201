"""`mergekit-from zoo ...` (and `auto`'s store) given a store, a Hub or a repo that cannot serve."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from tests.bad_input_cases import Case, Run


def _store(env, name: str = "zoo.sqlite") -> tuple[str, Path]:
    """A store created by this tool (a crawl must leave it byte-identical when it fails)."""
    from db import open_store

    path = env.tmp / name
    url = f"sqlite:///{path}"
    open_store(url).close()
    return url, path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _newer_store(env) -> Path:
    """A store whose schema revision this version does not know (written by a newer release)."""
    path = env.tmp / "newer.sqlite"
    c = sqlite3.connect(path)
    c.execute("pragma journal_mode=wal")
    c.execute("create table alembic_version (version_num varchar(32) primary key)")
    c.execute("insert into alembic_version values ('ffffffffffff')")
    c.commit()
    c.close()  # the last connection folds the WAL into the file, as the store's own close does
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def db_run(*argv: str, protect: Path, culprit: str) -> Run:
    return Run(list(argv), protect=[protect], culprit=culprit)


def _corrupt(env) -> Run:
    db = _file(env.tmp / "zoo.sqlite", b"not a database, " * 64)
    return db_run("zoo", "ls", "--db", f"sqlite:///{db}", protect=db, culprit=str(db))


def _below_a_file(env) -> Run:
    notes = _file(env.tmp / "notes.txt", b"my notes\n")
    return db_run("zoo", "ls", "--db", f"sqlite:///{notes}/zoo.sqlite", protect=notes, culprit=str(notes))


def _missing_folder(env) -> Run:
    folder = env.tmp / "nowhere"
    return db_run("zoo", "ls", "--db", f"sqlite:///{folder}/zoo.sqlite", protect=folder, culprit=str(folder))


def _a_folder(env) -> Run:
    (env.tmp / "stores").mkdir()
    return db_run("zoo", "ls", "--db", f"sqlite:///{env.tmp / 'stores'}", protect=env.tmp / "stores",
                  culprit=str(env.tmp / "stores"))


def _crawl(env, *argv: str, culprit: str) -> Run:
    """``zoo crawl ... --db STORE --quiet`` against an existing store, which must stay as it was."""
    url, path = _store(env)
    return Run(["zoo", "crawl", *argv, "--db", url, "--cache-dir", str(env.tmp / "hf-cache"), "--quiet"],
               protect=[path], culprit=culprit)


def _refused(env, *argv: str) -> Run:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    return _crawl(env, *argv, "--endpoint", endpoint, culprit=endpoint)


def _auto_corrupt_store(env) -> Run:
    db = _file(env.tmp / "zoo.sqlite", b"not a database, " * 64)
    out = env.tmp / "merged"
    return Run(["auto", "--base", "acme/tiny-llama", "--target", "math", "--method", "from", "--out", str(out),
                "--endpoint",
                env.hub.endpoint, "--db", f"sqlite:///{db}", "--cache-dir", str(env.tmp / "hf-cache"), "--quiet"],
               protect=[db, out], culprit=str(db))


CASES = [
    Case("zoo-db-corrupt", "mergekit-from zoo ls --db sqlite:///garbage.sqlite", "cannot open the store", _corrupt,
         fixtures=()),
    Case("zoo-db-below-a-file", "mergekit-from zoo ls --db sqlite:///notes.txt/zoo.sqlite", "no folder",
         _below_a_file, fixtures=()),
    Case("zoo-db-missing-folder", "mergekit-from zoo ls --db sqlite:///nowhere/zoo.sqlite", "no folder",
         _missing_folder, fixtures=()),
    Case("zoo-db-is-a-folder", "mergekit-from zoo ls --db sqlite:///FOLDER", "unable to open database file",
         _a_folder, fixtures=()),
    Case("zoo-db-newer-schema", "mergekit-from zoo ls --db sqlite:///newer.sqlite  # written by a newer release",
         "Can't locate revision",
         lambda env: db_run("zoo", "ls", "--db", f"sqlite:///{_newer_store(env)}",
                            protect=env.tmp / "newer.sqlite", culprit=str(env.tmp / "newer.sqlite")),
         fixtures=()),
    Case("zoo-db-not-a-url", "mergekit-from zoo ls --db zoo.sqlite  # a path, not a URL", "is not a database URL",
         lambda env: Run(["zoo", "ls", "--db", "zoo.sqlite"], protect=[env.tmp / "zoo.sqlite"],
                         culprit="'zoo.sqlite'", cwd=env.tmp), fixtures=()),
    Case("zoo-db-unknown-dialect", "mergekit-from zoo ls --db sqlit:///zoo.sqlite", "cannot open the store",
         lambda env: Run(["zoo", "ls", "--db", "sqlit:///zoo.sqlite"], protect=[env.tmp / "zoo.sqlite"],
                         culprit="sqlit:///zoo.sqlite", cwd=env.tmp), fixtures=()),
    Case("zoo-crawl-unknown-base", "mergekit-from zoo crawl --base nobody/nothing --endpoint HUB", "not found on",
         lambda env: _crawl(env, "--base", "nobody/nothing", "--endpoint", env.hub.endpoint,
                            culprit="'nobody/nothing'"), fixtures=("hub",)),
    Case("zoo-crawl-malformed-endpoint", "mergekit-from zoo crawl --base ID --endpoint localhost:8000",
         "is not an http(s)://host URL",
         lambda env: _crawl(env, "--base", "acme/tiny-llama", "--endpoint", "localhost:8000",
                            culprit="localhost:8000"), fixtures=()),
    Case("zoo-crawl-refused", "mergekit-from zoo crawl --search llama --endpoint http://127.0.0.1:CLOSED",
         "cannot connect to the Hub at", lambda env: _refused(env, "--search", "llama"), fixtures=()),
    Case("zoo-crawl-refused-base", "mergekit-from zoo crawl --base ID --endpoint http://127.0.0.1:CLOSED",
         "cannot connect to the Hub at", lambda env: _refused(env, "--base", "acme/tiny-llama"), fixtures=()),
    Case("zoo-crawl-unknown-relation", "mergekit-from zoo crawl --base ID --relations finetune,forks",
         "unknown relation", lambda env: _crawl(env, "--base", "acme/tiny-llama", "--relations", "finetune,forks",
                                                culprit="'forks'"), fixtures=()),
    Case("zoo-crawl-nothing-to-crawl", "mergekit-from zoo crawl", "crawl needs --base ID",
         lambda env: _crawl(env, culprit="--base"), fixtures=()),
    Case("zoo-show-unknown", "mergekit-from zoo show nobody/nothing", "is not in the store",
         lambda env: Run(["zoo", "show", "nobody/nothing", "--db", _store(env)[0]], protect=[env.tmp / "zoo.sqlite"],
                         culprit="'nobody/nothing'"), fixtures=()),
    Case("zoo-runs-unknown", "mergekit-from zoo runs 999", "no auto run 999",
         lambda env: Run(["zoo", "runs", "999", "--db", _store(env)[0]], protect=[env.tmp / "zoo.sqlite"],
                         culprit="999"), fixtures=()),
    Case("zoo-export-out-missing-folder", "mergekit-from zoo export --out nowhere/models.csv", "cannot write it",
         lambda env: Run(["zoo", "export", "--db", _store(env)[0], "--out", str(env.tmp / "nowhere" / "models.csv")],
                         protect=[env.tmp / "nowhere"], culprit="nowhere/models.csv"), fixtures=()),
    Case("zoo-serve-stats-not-json", "mergekit-from zoo serve DIR --stats stats.json  # not JSON", "not JSON",
         lambda env: Run(["zoo", "serve", str(env.tmp), "--port", "0", "--stats",
                          str(_file(env.tmp / "stats.json", b"{downloads: 3"))], protect=[env.tmp / "stats.json"],
                         culprit="stats.json"), fixtures=()),
    Case("auto-db-corrupt", "mergekit-from auto --base ID --target T --method from --db sqlite:///garbage.sqlite "
         "--out OUT",
         "cannot open the store", _auto_corrupt_store, fixtures=("hub",)),
]
