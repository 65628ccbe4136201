"""`mergekit-from auto` against the local Hub: pool choice, reproducible recipe, card, push, bad input."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from conftest import load_model, run_cli
from huggingface_hub import HfApi
from sqlalchemy import select
from zoo_fixtures import BASE, GATED, OTHER_DEPTH, OTHER_VOCAB, QUANTIZED

from db import MergeRun, Target, open_store

TARGET = "solve grade school math word problems"
TOKEN = "hf_test_token_do_not_store"


@pytest.fixture
def writable_hub(zoo_dir, tmp_path):
    """A private copy of the zoo served with write access for TOKEN only."""
    import shutil

    from zoo.hub_server import HubServer

    root = tmp_path / "hub"
    shutil.copytree(zoo_dir, root)
    with HubServer(root, page_size=3, gated={GATED: "manual"}, access_tokens={TOKEN}) as server:
        yield server


def auto(hub, tmp_path, *extra, out="merged"):
    return run_cli("auto", "--base", BASE, "--target", TARGET, "--out", tmp_path / out, "--endpoint", hub.endpoint,
                   "--db", f"sqlite:///{tmp_path / 'zoo.sqlite'}", "--cache-dir", tmp_path / "hf-cache",
                   "--quiet", *extra)


def test_from_merge_of_the_best_pool_with_provenance(writable_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = auto(writable_hub, tmp_path, "--method", "from", "--pool-size", "3", "--push-to-hub", "me/math-merge")
    assert result.exit_code == 0, result.output + result.stderr
    out = tmp_path / "merged"
    run = json.loads((out / "auto_run.json").read_text())
    pool = [s["repo_id"] for s in run["sources"]]
    assert len(pool) == 3 and "acme/tiny-llama-math" in pool and "acme/tiny-llama-algebra" in pool
    excluded = {e["repo_id"]: e["why"] for e in run["excluded"]}
    assert {OTHER_VOCAB, OTHER_DEPTH, QUANTIZED} <= set(excluded) and not {OTHER_VOCAB, OTHER_DEPTH, QUANTIZED} & set(pool)
    assert "vocabulary" in excluded[OTHER_VOCAB] and "quantized" in excluded[QUANTIZED]

    # the card pins every source to the commit the Hub reports, with its coefficient
    api = HfApi(endpoint=writable_hub.endpoint)
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"][0] == BASE and set(meta["base_model"][1:]) <= set(pool)
    assert meta["base_model_relation"] == "merge" and {"merge", "mergekit"} <= set(meta["tags"])
    for src in run["sources"]:
        assert f"| {src['repo_id']} | `{api.model_info(src['repo_id']).sha}` |" in card
    assert abs(sum(s["coefficient"] for s in run["sources"]) - 1.0) < 1e-4  # FroM weights are convex

    # the recipe that ran reproduces the same weights through `mergekit-from yaml`
    again = run_cli("yaml", out / "mergekit_config.yml", tmp_path / "again", "--quiet")
    assert again.exit_code == 0, again.stderr
    first, second = load_model(out), load_model(tmp_path / "again")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)

    # pushed to the local Hub; the token is nowhere on disk
    files = set(api.list_repo_files("me/math-merge"))
    assert {"README.md", "mergekit_config.yml", "model.safetensors", "auto_run.json"} <= files
    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in result.output + result.stderr

    store = open_store(f"sqlite:///{tmp_path / 'zoo.sqlite'}")
    with store.session() as s:
        row = s.scalars(select(MergeRun)).one()
        assert row.status == "done" and row.pool == pool and row.output == str(out)
        assert s.get(Target, row.target_id).description == TARGET  # the run points at the scores it used
        assert {p["repo_id"] for p in row.picks} == set(pool)
    store.close()

    # runs can be listed and compared from the CLI
    db = f"sqlite:///{tmp_path / 'zoo.sqlite'}"
    listed = [json.loads(line) for line in run_cli("zoo", "runs", "--db", db, "--json").stdout.splitlines()]
    assert [(r["run_id"], r["method"], r["status"], r["pool"]) for r in listed] == [(row.run_id, "from", "done", pool)]
    assert listed[0]["calib_loss_merged"] is None and listed[0]["output"] == str(out)
    full = json.loads(run_cli("zoo", "runs", str(row.run_id), "--db", db).stdout)
    assert full["inputs"]["target"] == TARGET and full["picks"] == row.picks
    assert "no auto run 99" in run_cli("zoo", "runs", "99", "--db", db).stderr


def test_bad_inputs_fail_in_one_line(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def fails(*extra, base=BASE, endpoint=None):
        args = ["auto", "--base", base, "--target", TARGET, "--out", tmp_path / "o",
                "--endpoint", endpoint or hub.endpoint, "--db", f"sqlite:///{tmp_path / 'z.sqlite'}", "--quiet", *extra]
        r = run_cli(*args)
        assert r.exit_code != 0 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "o").exists()
        return r.stderr

    assert "needs calibration data (--calib FILE); use --method from" in fails("--method", "fw_hard")
    assert "not found on" in fails("--method", "from", base="acme/no-such-model")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert f"cannot reach the Hub at {closed}" in fails("--method", "from", endpoint=closed)
    assert "no token" in fails("--method", "from", "--push-to-hub", "me/x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    assert "bad.jsonl:1:" in fails("--calib", str(bad))
    assert "no crawled descendants" in fails("--method", "from", base=OTHER_DEPTH)


def test_shortlist_keeps_only_compatible_full_weight_models(crawled):
    from mergekit_from.auto import shortlist
    from zoo.scoring import score_target

    cands = score_target(crawled, BASE, TARGET)
    pool, excluded = shortlist(crawled, cands, k=100)
    assert all(c.compatible for c in cands if c.repo_id in {m.repo_id for m in pool})
    reasons = {e["repo_id"]: e["why"] for e in excluded}
    assert "LoRA adapter" in reasons["acme/tiny-llama-math-lora"]
    assert GATED in reasons
    incompatible = [c for c in cands if c.compatible is False]
    assert shortlist(crawled, incompatible, k=5)[0] == []
