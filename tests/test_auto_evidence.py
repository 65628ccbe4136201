"""`auto` on a pool whose tasks are unknown: the quick task zoo served blind (``blind_auto``, conftest.py).

The pool comes from the probes' evidence (each task's best-aligned candidate first), a rerun probes
nothing again, and a pool with no evidence at all is refused in one line.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.models import run_cli


@pytest.mark.slow
def test_blank_cards_pool_covers_every_task_by_evidence(blind_auto):
    truth, run = blind_auto.truth, blind_auto.first.run
    # each task's best-aligned candidate first (task order): its full or LoRA expert; then the other aligned ones
    firsts = [truth[s["repo_id"]].split("-", 1) for s in run["sources"][:2]]
    assert [task for _, task in firsts] == ["ends", "maxchar"] and {kind for kind, _ in firsts} <= {"fft", "lora"}
    for s in run["sources"]:
        assert max(s["components"]["alignment"]["per_task"].values()) > 0
    excluded = {truth.get(e["repo_id"]): e["why"] for e in run["excluded"]}
    unaligned = [n for n, why in excluded.items() if why.startswith("no positive alignment")]
    assert unaligned, excluded  # left out with their scores, on the card too
    card = (blind_auto.first.out / "README.md").read_text()
    assert all(f"{r}: no positive alignment" in card for r, n in truth.items() if n in unaligned)
    assert "probed" in blind_auto.first.result.stderr


@pytest.mark.slow
def test_a_second_auto_probes_nothing_new(blind_auto):
    second = blind_auto.second
    assert "probed 0 candidates" in second.result.stderr, second.result.stderr
    assert not [p for _, p, status in second.requests if status == 206]  # no ranged read at all
    assert [s["repo_id"] for s in second.run["sources"]] == [s["repo_id"] for s in blind_auto.first.run["sources"]]


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
