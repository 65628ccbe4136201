"""``mergekit-from zoo ...`` end to end against the local Hub."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from mergekit_from.cli import main

from tests.fixtures.hub_repos import BASE, GATED, OTHER_VOCAB

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_crawl_ls_show_score_export(run, hub, db_url, tmp_path, hub_layout):
    out = run("zoo", "crawl", "--base", BASE, "--recursive", "--endpoint", hub.endpoint, "--db", db_url,
              "--cache-dir", str(tmp_path / "cache"), "--quiet").output
    assert f"enriched {len(hub_layout)} (enriched {len(hub_layout) - 1}, gated 1)" in out

    rows = [json.loads(line) for line in run("zoo", "ls", "--db", db_url, "--json").output.splitlines()]
    by_id = {r["repo_id"]: r for r in rows}
    assert set(by_id) == set(hub_layout)
    assert {"repo_id", "sha", "relation", "compatible", "gated"} <= set(rows[0])
    assert by_id[OTHER_VOCAB]["compatible"] is False and by_id["acme/tiny-llama-math"]["compatible"] is True
    assert by_id[GATED]["gated"] == "manual"
    assert "acme/tiny-llama-math-lora" in run("zoo", "ls", "--db", db_url).output

    shown = json.loads(run("zoo", "show", "acme/tiny-llama-math-lora", "--db", db_url).output)
    assert shown["adapter"]["r"] == 4 and shown["parents"][0]["id"] == BASE

    scored = [json.loads(line) for line in run("zoo", "score", "--base", BASE, "--target",
                                               "translate english to french", "--db", db_url, "--json").output.splitlines()]
    assert scored[0]["repo_id"] == "other/tiny-llama-french" and "text" in scored[0]["components"]
    assert "other/tiny-llama-french" in run("zoo", "score", "--base", BASE, "--target", "french", "--db", db_url,
                                             "--top", "1").output

    table = list(csv.DictReader(io.StringIO(run("zoo", "export", "--db", db_url).output)))
    assert len(table) == len(hub_layout)
    target = tmp_path / "zoo.json"
    run("zoo", "export", "--db", db_url, "--format", "json", "--out", str(target))
    assert len(json.loads(target.read_text())) == len(hub_layout)


def test_user_errors_are_one_line(run, db_url):
    res = run("zoo", "crawl", "--db", db_url, ok=False)
    assert res.exit_code == 2 and res.output.strip() == "error: crawl needs --base ID, or --search / --filter / --author"
    res = run("zoo", "crawl", "--base", BASE, "--relations", "finetune,forks", "--db", db_url, ok=False)
    assert res.exit_code == 2 and "unknown relation 'forks'" in res.output
    res = run("zoo", "show", "nobody/nothing", "--db", db_url, ok=False)
    assert res.exit_code == 2 and "not in the store" in res.output


@pytest.mark.slow
@pytest.mark.subprocess
def test_serve_command_serves_a_folder(hub_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mergekit_from.cli", "zoo", "serve", str(hub_dir), "--port", "0",
                             "--page-size", "2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        endpoint = line.split(" at ")[1].split()[0]
        assert endpoint.startswith("http://127.0.0.1:")
        ids = [m.id for m in HfApi(endpoint=endpoint, token=False).list_models(filter=f"base_model:{BASE}")]
        assert len(ids) == len(set(ids)) == 11
        with pytest.raises(HfHubHTTPError) as refused:  # read-only without --writable or --access-token
            HfApi(endpoint=endpoint, token=False).create_repo("team/new")
        assert refused.value.response.status_code == 403 and not (hub_dir / "team").exists()
    finally:
        proc.terminate()
        proc.wait(10)
