"""`mergekit-from auto` against the local Hub: pool choice, reproducible recipe, card, push, bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import HfApi
from sqlalchemy import select

from db import MergeRun, Target, open_store

from tests.fixtures.hub_repos import BASE, GATED, OTHER_DEPTH, OTHER_VOCAB, QUANTIZED
from tests.fixtures.models import load_model, merge, run_cli

TARGET = "solve grade school math word problems"
TOKEN = "hf_test_token_do_not_store"


@pytest.fixture(scope="module")
def from_run(hub_dir, tmp_path_factory):
    """One `auto --method from --pool-size 3 --push-to-hub me/math-merge` run against a private copy of the
    Hub repos, served with write access for TOKEN only; the tests below each check one part of it."""
    import shutil

    from zoo.hub_server import HubServer

    tmp_path = tmp_path_factory.mktemp("auto-from")
    root = tmp_path / "hub"
    shutil.copytree(hub_dir, root)
    with HubServer(root, page_size=3, gated={GATED: "manual"}, access_tokens={TOKEN}) as server:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_TOKEN", TOKEN)
            result = auto(server, tmp_path, "--method", "from", "--pool-size", "3", "--push-to-hub", "me/math-merge")
        assert result.exit_code == 0, result.output + result.stderr
        out = tmp_path / "merged"
        run = json.loads((out / "auto_run.json").read_text())
        yield SimpleNamespace(hub=server, tmp=tmp_path, out=out, result=result, run=run,
                              pool=[s["repo_id"] for s in run["sources"]], db=f"sqlite:///{tmp_path / 'zoo.sqlite'}")


def auto(hub, tmp_path, *extra, out="merged"):
    return run_cli("auto", "--base", BASE, "--target", TARGET, "--out", tmp_path / out, "--endpoint", hub.endpoint,
                   "--db", f"sqlite:///{tmp_path / 'zoo.sqlite'}", "--cache-dir", tmp_path / "hf-cache",
                   "--quiet", *extra)


def test_from_pool_is_the_best_compatible_models(from_run):
    pool = from_run.pool
    assert len(pool) == 3 and "acme/tiny-llama-math" in pool and "acme/tiny-llama-algebra" in pool
    excluded = {e["repo_id"]: e["why"] for e in from_run.run["excluded"]}
    assert {OTHER_VOCAB, OTHER_DEPTH, QUANTIZED} <= set(excluded) and not {OTHER_VOCAB, OTHER_DEPTH, QUANTIZED} & set(pool)
    assert "vocabulary" in excluded[OTHER_VOCAB] and "quantized" in excluded[QUANTIZED]


def test_from_card_pins_every_source_to_its_commit(from_run):
    """The card pins every source to the commit the Hub reports, with its coefficient."""
    api = HfApi(endpoint=from_run.hub.endpoint, token=TOKEN)
    card = (from_run.out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"][0] == BASE and set(meta["base_model"][1:]) <= set(from_run.pool)
    assert meta["base_model_relation"] == "merge" and {"merge", "mergekit"} <= set(meta["tags"])
    for src in from_run.run["sources"]:
        assert f"| {src['repo_id']} | `{api.model_info(src['repo_id']).sha}` |" in card
    assert abs(sum(s["coefficient"] for s in from_run.run["sources"]) - 1.0) < 1e-4  # FroM weights are convex


def test_from_recipe_that_ran_reproduces_the_weights(from_run, tmp_path):
    again = run_cli("yaml", from_run.out / "mergekit_config.yml", tmp_path / "again", "--quiet")
    assert again.exit_code == 0, again.stderr
    first, second = load_model(from_run.out), load_model(tmp_path / "again")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)


def test_from_push_reaches_the_hub_and_the_token_is_nowhere_on_disk(from_run):
    files = set(HfApi(endpoint=from_run.hub.endpoint, token=TOKEN).list_repo_files("me/math-merge"))
    assert {"README.md", "mergekit_config.yml", "model.safetensors", "auto_run.json"} <= files
    for path in [*from_run.tmp.rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in from_run.result.output + from_run.result.stderr


def test_from_run_is_recorded_in_the_store(from_run):
    store = open_store(from_run.db)
    with store.session() as s:
        row = s.scalars(select(MergeRun)).one()
        assert row.status == "done" and row.pool == from_run.pool and row.output == str(from_run.out)
        assert s.get(Target, row.target_id).description == TARGET  # the run points at the scores it used
        assert {p["repo_id"] for p in row.picks} == set(from_run.pool)
    store.close()


def test_from_run_is_listed_and_shown_by_zoo_runs(from_run):
    db, pool, out = from_run.db, from_run.pool, from_run.out
    store = open_store(db)
    with store.session() as s:
        row = s.scalars(select(MergeRun)).one()
    store.close()
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
    assert f"base model '{GATED}' is gated on" in fails("--method", "from", base=GATED)
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


def closed_endpoint() -> str:
    """A URL on a port nobody listens on: any request to it fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def calib_file(path):
    path.write_text("".join('{"prompt": "%d+%d=", "response": "%d"}\n' % (i, i, 2 * i) for i in range(8)))
    return path


@pytest.mark.parametrize("extra, message", [
    (["--set", "max_iter=3"], "--set max_iter: not a setting of fw_soft (accepted: ada_batch_size,"),
    (["--set", "max_iters=0"], "--set for fw_soft: max_iters: Input should be greater than 0 (got 0)"),
    (["--set", "targets=x"], "--set targets: not a setting of fw_soft"),
    (["--set", "init=./nowhere"], "--set init=./nowhere: no such folder (and not one of task_arithmetic|ties|base|from)"),
    (["--method", "from", "--set", "k=-1"], "--set k=-1 is invalid for from: Input should be greater than or equal"),
    (["--method", "from", "--set", "lamda=2"], "--set lamda: not a setting of from (accepted: k, lambda, scope, weigh"),
    (["--method", "fw_hard", "--set", "update=dare"], "--set for fw_hard: update: Input should be"),
])
def test_bad_settings_fail_before_any_hub_request(tmp_path, extra, message):
    """The endpoint refuses every connection: the error must come from the checks, not the Hub."""
    r = run_cli("auto", "--base", BASE, "--target", TARGET, "--out", tmp_path / "o", "--endpoint", closed_endpoint(),
                "--db", f"sqlite:///{tmp_path / 'z.sqlite'}", "--calib", calib_file(tmp_path / "math.jsonl"), *extra)
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {message}") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "z.sqlite").exists()


@pytest.fixture
def hub_with_tokenizer(hub_dir, tmp_path):
    """The zoo with a tokenizer next to the base, so calibration data can be scored and evaluated."""
    import shutil

    from mergekit_from.taskzoo.tokenizer import CharVocab
    from zoo.hub_server import HubServer

    root = tmp_path / "hub"
    shutil.copytree(hub_dir, root)
    CharVocab().save(root / BASE)
    with HubServer(root, page_size=3, gated={GATED: "manual"}) as server:
        yield server


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_merge_worse_than_the_base_is_reported_and_quiet_is_silent(hub_with_tokenizer, tmp_path):
    """lambda=30 scales the merged task vector 30x: a real merge that raises the calibration loss."""
    calib = calib_file(tmp_path / "math.jsonl")
    args = ["auto", "--base", BASE, "--target", TARGET, "--endpoint", hub_with_tokenizer.endpoint,
            "--db", f"sqlite:///{tmp_path / 'zoo.sqlite'}", "--cache-dir", tmp_path / "hf-cache", "--calib", calib,
            "--method", "from", "--set", "lambda=30"]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_DISABLE_PROGRESS_BARS")}
    quiet = subprocess.run([sys.executable, "-m", "mergekit_from.cli", *map(str, args), "--out", tmp_path / "quiet",
                            "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # no bars, no log lines, no warning
    run = json.loads((tmp_path / "quiet" / "auto_run.json").read_text())
    assert run["evaluation"]["merged"]["math"] > run["evaluation"]["base"]["math"]
    assert run["worse_than_base"] == ["math"]
    assert "the merge is worse than the base on math" in (tmp_path / "quiet" / "README.md").read_text()
    assert abs(sum(s["coefficient"] for s in run["sources"]) - 30) < 1e-3  # lambda is part of the coefficient

    loud = run_cli(*args, "--out", tmp_path / "loud")  # the store's crawl and the cache are reused
    assert loud.exit_code == 0, loud.stderr
    warnings = [line for line in loud.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "calibration loss on math is worse than the base's" in warnings[0], loud.stderr


def test_fw_trace_is_labelled_by_repo_id(hub_with_tokenizer, tmp_path):
    from PIL import Image

    r = run_cli("auto", "--base", BASE, "--target", TARGET, "--out", tmp_path / "fw", "--endpoint",
                hub_with_tokenizer.endpoint, "--db", f"sqlite:///{tmp_path / 'zoo.sqlite'}", "--cache-dir",
                tmp_path / "hf-cache", "--calib", calib_file(tmp_path / "math.jsonl"), "--pool-size", "3",
                "--set", "max_iters=1", "--set", "ada_iters=2", "--quiet")
    assert r.exit_code == 0, r.stderr
    pool = [s["repo_id"] for s in json.loads((tmp_path / "fw" / "auto_run.json").read_text())["sources"]]
    labels = Image.open(tmp_path / "fw" / "fw_trace.png").text["Description"].removeprefix("candidates: ")
    assert labels.split(", ") == pool


def test_card_coefficients_are_the_ones_the_merge_used(tiny, tmp_path):
    """Per-model weights, scope: linear and lambda: each tensor's coefficients, read back from the
    merged weights by least squares and averaged by size, equal what auto writes on the card."""
    import torch

    from mergekit_from.methods.from_pool import mean_coefficients

    models, priors = [tiny["a"], tiny["b"], tiny["c"]], [0.5, 2.0, 1.0]
    params = {"k": 1.0, "lambda": 0.8, "scope": "linear"}
    recipe = {"merge_method": "from", "base_model": str(tiny["base"]), "parameters": params,
              "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, priors)]}
    merged = merge(tmp_path, recipe)
    base, inputs = load_model(tiny["base"]), [load_model(m) for m in models]
    totals, size = torch.zeros(len(models), dtype=torch.float64), 0
    for name, b in base.items():
        taus = torch.stack([(sd[name] - b).double().flatten() for sd in inputs], dim=1)
        used = torch.linalg.lstsq(taus, (merged[name] - b).double().flatten()).solution
        totals += used * b.numel()
        size += b.numel()
    card = mean_coefficients(tiny["base"], models, params, priors)
    assert torch.allclose(torch.tensor(card, dtype=torch.float64), totals / size, atol=1e-4), (card, totals / size)
    assert abs(sum(card) - 0.8) < 1e-4 and card[1] > card[0]  # not the unweighted, all-scope, lambda-free figures


def test_fw_trace_title_stays_inside_the_figure():
    from mergekit_from.prepass.plot import trace_figure
    from mergekit_from.prepass.trace import FWTrace, Iteration

    targets = ["reverse_words", "sort_letters", "shift_cipher", "maxchar", "evens"]
    trace = FWTrace("fw_soft", {"objective": "cross_entropy"}, ["org/a", "org/b"], targets,
                    [Iteration(0, 1.0, pick_share={"org/a": 1.0})], 0.5)
    fig = trace_figure(trace)
    fig.canvas.draw()
    box, title = fig.bbox, fig.axes[0].title
    drawn = title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 <= drawn.x0 and drawn.x1 <= box.x1 and drawn.y1 <= box.y1, (drawn, box)
    assert all(t in title.get_text().replace("\n", " ") for t in targets)
