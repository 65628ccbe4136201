"""The crawler against the local Hub: tree walk, enrichment, resume, faults, concurrency."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from db import AdapterConfig, CrawlState, Edge, Model, TensorFingerprint, open_store
from zoo.errors import HubAccessError, HubCrawlError
from zoo.resilience import RetryPolicy

from tests.fixtures.hub_repos import ADAPTER, BASE, GATED, QUANTIZED, SECOND_LEVEL

ROOT = Path(__file__).resolve().parents[1]


def _count(store, model) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def _ids(store) -> set[str]:
    with store.session() as s:
        return set(s.scalars(select(Model.repo_id)))


def test_recursive_tree_crawl_enriches_every_model(make_crawler, store, hub_layout):
    report = make_crawler().crawl_tree(BASE, recursive=True)
    assert _ids(store) == set(hub_layout)
    assert report.statuses == {"enriched": len(hub_layout) - 1, "gated": 1}
    with store.session() as s:
        edges = {(e.child_id, e.parent_id, e.relation) for e in s.scalars(select(Edge))}
        assert (SECOND_LEVEL, "acme/tiny-llama-math", "finetune") in edges
        assert (ADAPTER, BASE, "adapter") in edges and (QUANTIZED, BASE, "quantized") in edges
        gated = s.get(Model, GATED)
        assert (gated.status, gated.gated) == ("gated", "manual") and "GatedRepoError" in gated.error
        adapter = s.get(AdapterConfig, ADAPTER)
        assert (adapter.peft_type, adapter.r, sorted(adapter.target_modules)) == ("LORA", 4, ["q_proj", "v_proj"])
        assert s.get(TensorFingerprint, ADAPTER).kind == "adapter"
        assert s.get(Model, QUANTIZED).is_quantized
        assert "grade school math" in s.get(Model, "acme/tiny-llama-math").card_text
        assert s.get(Model, BASE).config["vocab_size"] == 64


def test_non_recursive_crawl_stops_at_direct_children(make_crawler, store):
    make_crawler().crawl_tree(BASE, relations=["finetune"])
    ids = _ids(store)
    assert SECOND_LEVEL not in ids and ADAPTER not in ids and "acme/tiny-llama-math" in ids


def test_missing_repo_is_recorded_not_raised(make_crawler, store):
    report = make_crawler().enrich(["nobody/nothing"])
    assert report.statuses == {"missing": 1}
    with store.session() as s:
        m = s.get(Model, "nobody/nothing")
        assert m.status == "missing" and "RepositoryNotFoundError" in m.error


def test_second_crawl_skips_unchanged_and_redoes_changed(make_crawler, store, hub, hub_dir, hub_layout):
    crawler = make_crawler()
    crawler.crawl_tree(BASE, recursive=True)
    again = crawler.crawl_tree(BASE, recursive=True)
    assert again.enriched == 0 and again.skipped_unchanged == len(hub_layout)
    readme = hub_dir / "other/tiny-llama-poems/README.md"
    original = readme.read_text()
    try:
        readme.write_text(original.replace("romantic poets", "romantic and modern poets"))
        hub.catalog.rescan()
        third = crawler.crawl_tree(BASE, recursive=True)
        assert third.enriched == 1
        with store.session() as s:
            assert "modern poets" in s.get(Model, "other/tiny-llama-poems").card_text
    finally:
        readme.write_text(original)
        hub.catalog.rescan()
    assert _count(store, Model) == len(hub_layout)


def test_rate_limits_and_5xx_bursts_are_survived(make_crawler, store, hub, hub_layout):
    hub.inject(r"^/api/models$", 429, times=3, reset_s=0)  # listing pages
    hub.inject(r"^/api/models$", 503, times=2)
    hub.inject(r"^/api/models/acme/", 429, times=4, reset_s=0)  # model_info (no client-side retry)
    hub.inject(r"^/api/models/other/", 502, times=3)
    report = make_crawler().crawl_tree(BASE, recursive=True)
    assert _ids(store) == set(hub_layout)
    assert report.statuses == {"enriched": len(hub_layout) - 1, "gated": 1}
    statuses = [status for _, _, status in hub.requests]
    assert statuses.count(429) == 7 and statuses.count(503) == 2 and statuses.count(502) == 3


def test_rate_limit_wait_follows_the_ratelimit_header(make_crawler, hub):
    hub.inject(r"^/api/models/acme/tiny-llama$", 429, times=1, reset_s=1)
    t0 = time.monotonic()
    make_crawler().enrich([BASE])
    assert time.monotonic() - t0 >= 1.0


def test_listing_failure_keeps_pages_and_a_rerun_resumes(make_crawler, store, hub, hub_layout):
    query = f"base_model:finetune:{BASE}"
    expected = {r for r, rel in hub_layout.items() if rel == "finetune" and r != SECOND_LEVEL}
    crawler = make_crawler(retry=RetryPolicy(patience_s=0))  # gives up at the first failure
    hub.inject(r"^/api/models$", 503, times=1, after=2)  # the Hub goes down after the second page
    with pytest.raises(HubCrawlError, match="run the crawl again to resume"):
        crawler.list_query({"filter": query})
    assert len(_ids(store)) == 6
    hub.requests.clear()
    make_crawler().list_query({"filter": query})
    assert _ids(store) == expected and _count(store, Model) == len(expected)
    listing = [p for _, p, _ in hub.requests if p.startswith("/api/models")]
    assert len(listing) == 1 and "cursor=" in listing[0]  # one remaining page, fetched from the saved URL
    with store.session() as s:
        state = s.scalars(select(CrawlState)).one()
        assert state.finished and state.items_done == len(expected)


def test_a_page_whose_write_fails_leaves_no_part_of_it_and_a_rerun_resumes(make_crawler, store, hub_layout,
                                                                            monkeypatch):
    """A page's model rows, edges and next-page URL commit together or not at all."""
    query = f"base_model:finetune:{BASE}"
    expected = {r for r, rel in hub_layout.items() if rel == "finetune" and r != SECOND_LEVEL}
    real_upsert, edge_writes = store.upsert, []

    def upsert(session, model, rows):
        if model is Edge:
            edge_writes.append(len(rows))
            if len(edge_writes) == 2:  # the second page, after its model rows went in
                raise OSError("disk full")
        return real_upsert(session, model, rows)

    monkeypatch.setattr(store, "upsert", upsert)
    with pytest.raises(OSError, match="disk full"):
        make_crawler().list_query({"filter": query})
    assert gc.isenabled()  # the collector paused for the page is back on
    assert len(_ids(store)) == 3 and _count(store, Edge) == 3  # the first page only
    with store.session() as s:
        state = s.scalars(select(CrawlState)).one()
        assert (state.pages_done, state.items_done, state.finished) == (1, 3, False)
        assert "cursor=" in state.next_url
    monkeypatch.undo()
    make_crawler().list_query({"filter": query})
    assert _ids(store) == expected and _count(store, Model) == len(expected) == _count(store, Edge)


def test_page_work_pauses_the_cyclic_collector_and_restores_the_callers_setting(make_crawler, monkeypatch):
    from zoo.crawler import Crawler

    during, real_store_page = [], Crawler._store_page

    def store_page(self, *args):
        during.append(gc.isenabled())
        return real_store_page(self, *args)

    monkeypatch.setattr(Crawler, "_store_page", store_page)
    make_crawler().list_query({"filter": f"base_model:finetune:{BASE}"})
    assert len(during) >= 2 and not any(during) and gc.isenabled()
    gc.disable()
    try:
        make_crawler().list_query({"filter": f"base_model:finetune:{BASE}"})  # a new pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# A crawler process without the CLI's mergekit import (half the start-up time on a busy machine).
CRAWL_SCRIPT = """
import sys
import threading
from db import open_store
from zoo.crawler import Crawler
from zoo.resilience import RetryPolicy
db_url, endpoint, base, relations, recursive, enrich, floor = sys.argv[1:]
crawler = Crawler(open_store(db_url), endpoint, token=False, workers=2, progress=False,
                  retry=RetryPolicy(floor_s=float(floor)))
crawler.crawl_tree(base, relations=relations.split(","), recursive=recursive == "1", enrich=enrich == "1")
"""


def _crawl_cmd(db_url: str, endpoint: str, relations: str, recursive: bool, enrich: bool,
               floor_s: float = 1.0) -> list[str]:
    return [sys.executable, "-c", CRAWL_SCRIPT, db_url, endpoint, BASE, relations, str(int(recursive)),
            str(int(enrich)), str(floor_s)]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(cache), "HF_TOKEN": ""}


def _wait_until_listed(engine, items: int, timeout_s: float = 60) -> None:
    """Poll the crawl's saved progress until ``items`` listed models are committed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with engine.connect() as c:
                if (c.execute(text("select max(items_done) from crawl_state")).scalar() or 0) >= items:
                    return
        except Exception:  # noqa: BLE001 - the schema may not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"the crawler did not list {items} models within {timeout_s} s")


def _kill_9_once_listed(cmd: list[str], env: dict[str, str], db_url: str, gate: threading.Event,
                        items: int = 3) -> None:
    """Run ``cmd`` and SIGKILL it once ``items`` listed models are committed, while the Hub holds
    the next listing page at ``gate``; then open the gate."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = create_engine(db_url)
    try:
        _wait_until_listed(engine, items)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gate.set()
        engine.dispose()


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_9_mid_crawl_then_resume_loses_and_duplicates_nothing(hub, db_url, tmp_path, hub_layout):
    """A crawler process killed with SIGKILL between pages resumes from the saved next-page URL."""
    hub.page_size = 1
    gate = threading.Event()
    hub.inject(r"^/api/models$", 200, times=1, after=3, hold=gate)  # the fourth page waits: the kill lands there
    cmd = _crawl_cmd(db_url, hub.endpoint, "finetune", recursive=False, enrich=False)
    _kill_9_once_listed(cmd, _env(tmp_path), db_url, gate)
    store = open_store(db_url)
    before = _ids(store) - {BASE}
    assert 3 <= len(before) < 8, "the kill should land mid-listing"
    with store.session() as s:
        saved = s.scalars(select(CrawlState)).one()
        assert not saved.finished and "cursor=" in saved.next_url
    hub.requests.clear()
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = {r for r, rel in hub_layout.items() if rel == "finetune" and r != SECOND_LEVEL}
    assert _ids(store) - {BASE} == expected
    listing = [p for _, p, _ in hub.requests if p.startswith("/api/models?")]
    assert "cursor=" in listing[0]  # resumed, not restarted
    with store.engine.connect() as c:
        assert c.execute(text("select count(*) - count(distinct repo_id) from models")).scalar() == 0
    store.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_9_amid_rate_limits_and_outages_then_resume_stores_every_model_once(hub, db_url, tmp_path,
                                                                                 hub_layout):
    """Bursts of 429 (t=0) and 5xx on listing, model_info and file reads, a SIGKILL mid-listing,
    a resume through the rest of the bursts: every model ends in the store exactly once, enriched."""
    hub.page_size = 1
    hub.inject(r"^/api/models$", 429, times=6, after=1)  # the double, after the first page
    hub.inject(r"^/api/models$", 503, times=4, after=1)
    gate = threading.Event()
    hub.inject(r"^/api/models$", 200, times=1, after=1, hold=gate)  # then the fourth page waits: the kill lands there
    hub.inject(r"^/api/models/acme/", 429, times=7)
    hub.inject(r"^/api/models/other/", 502, times=6)
    hub.inject(r"/resolve/.*\.json$", 503, times=6)
    cmd = _crawl_cmd(db_url, hub.endpoint, "finetune,adapter,merge,quantized", recursive=True, enrich=True,
                     floor_s=0.02)
    _kill_9_once_listed(cmd, _env(tmp_path), db_url, gate)
    store = open_store(db_url)
    assert len(_ids(store) - {BASE}) < len(hub_layout) - 1, "the kill should land mid-listing"
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert _ids(store) == set(hub_layout)
    with store.engine.connect() as c:
        assert c.execute(text("select count(*) - count(distinct repo_id) from models")).scalar() == 0
    with store.session() as s:
        statuses = dict(s.execute(select(Model.status, func.count()).group_by(Model.status)).all())
    assert statuses == {"enriched": len(hub_layout) - 1, "gated": 1}
    assert all(f.times == 0 for f in hub._faults if f.status != 200)  # every burst was met and outlasted
    store.close()


@pytest.mark.slow
def test_long_bursts_on_every_kind_of_call_are_outlasted(make_crawler, store, hub, hub_layout):
    """Bursts longer than the old fixed five retries, on listing, model_info, header reads and
    downloads, with quick waits: the crawl completes."""
    hub.inject(r"^/api/models$", 429, times=6, reset_s=0)
    hub.inject(r"^/api/models$", 502, times=8)
    hub.inject(r"^/api/models/acme/", 429, times=9, reset_s=0)  # model_info
    hub.inject(r"^/api/models/other/", 500, times=7)
    hub.inject(r"/resolve/.*\.safetensors$", 503, times=8)  # safetensors header reads
    hub.inject(r"/resolve/.*README\.md$", 504, times=7)  # downloads
    report = make_crawler(retry=RetryPolicy(floor_s=0.002)).crawl_tree(BASE, recursive=True)
    assert _ids(store) == set(hub_layout)
    assert report.statuses == {"enriched": len(hub_layout) - 1, "gated": 1}
    statuses = [status for _, _, status in hub.requests]
    assert [statuses.count(code) for code in (429, 500, 502, 503, 504)] == [15, 7, 8, 8, 7]


def test_unknown_base_is_an_error_and_stores_nothing(make_crawler, store):
    with pytest.raises(HubAccessError, match="base 'nobody/nothing' not found on http://127.0.0.1:"):
        make_crawler().crawl_tree("nobody/nothing")
    assert _count(store, Model) == 0


@pytest.mark.slow
def test_a_refused_connection_fails_within_seconds_naming_the_endpoint(store):
    import socket

    from zoo.crawler import Crawler

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    crawler = Crawler(store, endpoint, token=False, progress=False)  # the default policy
    for crawl in (lambda: crawler.crawl_tree(BASE), lambda: crawler.crawl_search(search="llama")):
        t0 = time.monotonic()
        with pytest.raises(HubAccessError, match=f"cannot connect to the Hub at {endpoint}"):
            crawl()
        assert time.monotonic() - t0 < 10


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_crawlers_on_one_database_do_not_corrupt_it(hub, db_url, tmp_path, hub_layout):
    cmd = _crawl_cmd(db_url, hub.endpoint, "finetune,adapter,merge,quantized", recursive=True, enrich=True)
    procs = [subprocess.Popen(cmd, env=_env(tmp_path / str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    store = open_store(db_url)
    with store.engine.connect() as c:
        assert c.execute(text("pragma integrity_check")).scalar() == "ok"
        assert c.execute(text("select count(*) - count(distinct repo_id) from models")).scalar() == 0
    assert _ids(store) == set(hub_layout)
    with store.session() as s:
        statuses = dict(s.execute(select(Model.status, func.count()).group_by(Model.status)).all())
    assert statuses == {"enriched": len(hub_layout) - 1, "gated": 1}
    store.close()


def test_hf_token_is_honoured_and_never_stored(make_crawler, hub, store, tmp_path, monkeypatch):
    from zoo.crawler import Crawler

    assert make_crawler().crawl_tree(BASE, relations=["finetune"]).statuses["gated"] == 1  # no token yet
    secret = "hf_zoo_test_secret_0123456789"
    hub.access_tokens.add(secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    crawler = Crawler(store, hub.endpoint, cache_dir=tmp_path / "cache", progress=False)  # token from the env
    report = crawler.crawl_tree(BASE, relations=["finetune"])
    assert report.statuses == {"enriched": 1}  # only the gated repo is looked at again, and now it opens
    with store.session() as s:
        assert s.get(Model, GATED).status == "enriched" and s.get(Model, GATED).gated == "manual"
    store.close()
    db_file = Path(store.engine.url.database)
    for f in [db_file, *db_file.parent.glob(db_file.name + "-*")]:
        assert secret.encode() not in f.read_bytes()


def test_plain_search_and_filter_crawls(make_crawler, store, hub_layout):
    crawler = make_crawler()
    report = crawler.crawl_search(search="math")
    math_ids = {r for r in hub_layout if "math" in r}
    assert _ids(store) == math_ids and report.statuses == {"enriched": len(math_ids)}
    report = crawler.crawl_search(filters=["translation"], author="other")
    assert _ids(store) == math_ids | {"other/tiny-llama-french"} and report.enriched == 1
