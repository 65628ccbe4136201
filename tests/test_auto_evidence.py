"""`auto` on a pool whose tasks are unknown: the quick task zoo with anonymous names and blank cards.

The pool comes from the probes' evidence (each task's best-aligned candidate first), a rerun probes
nothing again, and a pool with no evidence at all is refused in one line.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.fixtures.models import run_cli

TASKS = ("ends", "maxchar")


@pytest.fixture(scope="module")
def blank_auto(quick_taskzoo, tmp_path_factory):
    """Two `auto --method fw_soft --pool-size 2` runs against the blank zoo, the second reusing the store."""
    from tests.fixtures.blank_zoo import blank_hub
    from zoo.hub_server import HubServer

    tmp = tmp_path_factory.mktemp("blank-auto")
    base, truth = blank_hub(quick_taskzoo, tmp / "hub")
    calib = [a for t in TASKS for a in ("--calib", f"{t}={quick_taskzoo.calibration(t)}")]
    with HubServer(tmp / "hub") as hub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))  # the gradient cache

        def auto(out):
            hub.requests.clear()
            r = run_cli("auto", "--base", base, "--target", "a model for two tasks", "--out", tmp / out,
                        "--endpoint", hub.endpoint, "--db", f"sqlite:///{tmp / 'zoo.sqlite'}", "--cache-dir",
                        tmp / "hf-cache", *calib, "--pool-size", "2", "--set", "max_iters=1", "--set", "ada_iters=2")
            assert r.exit_code == 0, r.stderr
            return SimpleNamespace(result=r, requests=list(hub.requests), out=tmp / out,
                                   run=json.loads((tmp / out / "auto_run.json").read_text()))

        yield SimpleNamespace(truth=truth, first=auto("first"), second=auto("second"))


@pytest.mark.slow
def test_blank_cards_pool_covers_every_task_by_evidence(blank_auto):
    truth, run = blank_auto.truth, blank_auto.first.run
    assert sorted(truth[s["repo_id"]] for s in run["sources"]) == ["fft-ends", "fft-maxchar"]
    for s in run["sources"]:
        assert max(s["components"]["alignment"]["per_task"].values()) > 0
    excluded = {truth.get(e["repo_id"]): e["why"] for e in run["excluded"]}
    unaligned = [n for n, why in excluded.items() if why.startswith("no positive alignment")]
    assert unaligned, excluded  # left out with their scores, on the card too
    card = (blank_auto.first.out / "README.md").read_text()
    assert all(f"{r}: no positive alignment" in card for r, n in truth.items() if n in unaligned)
    assert "probed" in blank_auto.first.result.stderr


@pytest.mark.slow
def test_a_second_auto_probes_nothing_new(blank_auto):
    second = blank_auto.second
    assert "probed 0 candidates" in second.result.stderr, second.result.stderr
    assert not [p for _, p, status in second.requests if status == 206]  # no ranged read at all
    assert [s["repo_id"] for s in second.run["sources"]] == [s["repo_id"] for s in blank_auto.first.run["sources"]]


def test_no_evidence_exits_2_in_one_line(twin_hub, tmp_path, monkeypatch):
    from tests.fixtures.hub_repos import BASE

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calib = tmp_path / "math.jsonl"
    calib.write_text('{"prompt": "1+1=", "response": "2"}\n')
    r = run_cli("auto", "--base", BASE, "--target", "math", "--out", tmp_path / "o", "--endpoint", twin_hub.endpoint,
                "--db", f"sqlite:///{tmp_path / 'z.sqlite'}", "--cache-dir", tmp_path / "hf", "--calib", calib,
                "--quiet")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: no candidate shows evidence for the target: none of the 1 probed")
    assert not (tmp_path / "o").exists()
