"""Probes: the target's gradient, the subset, ranged reads counted by the local Hub, alignment, the store."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest

from zoo.gradient import TargetGradient
from zoo.probe import adapter_cosines, choose_subset, lora_factors, model_cosines

TASKS = ("ends", "maxchar")


def _toy_gradient(rng, subset) -> TargetGradient:
    shapes = {"w.q.weight": [6, 5], "w.k.weight": [4, 5], "w.n.weight": [5]}
    rows = {n: subset.get(n, 0) for n in shapes}
    grads = {t: {n: rng.normal(size=[rows[n], *shapes[n][1:]]) for n in subset} for t in TASKS}
    base = {n: rng.normal(size=[rows[n], *shapes[n][1:]]) for n in subset}
    return TargetGradient("k", "b", list(TASKS), {}, shapes, {n: 4 * math.prod(s) for n, s in shapes.items()},
                          {}, dict(subset), 0, grads, base)


def test_adapter_alignment_from_factors_equals_dense():
    """<G, sBA> and ||sBA|| from the factors equal the dense task vector's, rows cut and rsLoRA scale included."""
    rng = np.random.default_rng(0)
    grad = _toy_gradient(rng, {"w.q.weight": 3, "w.k.weight": 4})
    config = {"r": 2, "lora_alpha": 8, "use_rslora": True, "alpha_pattern": {"k": 3}}
    tensors = {"base_model.model.w.q.lora_A.weight": rng.normal(size=(2, 5)),
               "base_model.model.w.q.lora_B.weight": rng.normal(size=(6, 2)),
               "base_model.model.w.k.lora_A.weight": rng.normal(size=(2, 5)),
               "base_model.model.w.k.lora_B.weight": rng.normal(size=(4, 2))}
    factors = lora_factors(config, tensors, grad.shapes)
    assert factors["w.q.weight"][2] == pytest.approx(8 / math.sqrt(2))
    assert factors["w.k.weight"][2] == pytest.approx(3 / math.sqrt(2))
    dense = {n: grad.base_arrays[n] + (s * b @ a)[: grad.subset[n]] for n, (a, b, s) in factors.items()}
    got, want = adapter_cosines(grad, factors), model_cosines(grad, dense)
    assert got == pytest.approx(want, abs=1e-6) and any(abs(v) > 0.05 for v in got.values())
    # an adapter that leaves one subset tensor alone: tau is zero there, the gradient's norm still counts
    only_q = {"w.q.weight": factors["w.q.weight"]}
    dense_q = {**dense, "w.k.weight": grad.base_arrays["w.k.weight"]}
    assert adapter_cosines(grad, only_q) == pytest.approx(model_cosines(grad, dense_q), abs=1e-6)


def test_subset_spends_the_budget_on_matrices_and_every_task_counts():
    shapes = {"a.weight": [10, 10], "b.weight": [10, 10], "c.weight": [10, 10], "norm.weight": [10],
              "model.embed_tokens.weight": [50, 10]}
    nbytes = {n: 4 * math.prod(s) for n, s in shapes.items()}
    # task y's gradient is 1000x smaller overall, but c is its heaviest tensor: c must be in
    mass = {"x": {"a.weight": 900.0, "b.weight": 100.0, "c.weight": 1.0, "norm.weight": 1e6,
                  "model.embed_tokens.weight": 1e6},
            "y": {"a.weight": 0.01, "b.weight": 0.01, "c.weight": 0.5}}
    subset = choose_subset(mass, nbytes, shapes, budget_bytes=400 + 200)
    assert list(subset) == ["c.weight", "a.weight"] and subset == {"c.weight": 10, "a.weight": 5}
    used = sum(nbytes[n] // shapes[n][0] * rows for n, rows in subset.items())
    assert used <= 600
    assert choose_subset(mass, nbytes, shapes, budget_bytes=39) == {}  # not even one row fits


# -- on the quick task zoo, served with anonymous names and blank cards ---------------------------


@pytest.fixture(scope="module")
def blank(quick_taskzoo, tmp_path_factory):
    """The quick zoo served blind (``ServedZoo``: neutral ids, cards that say only `base_model:`), crawled,
    with the two target tasks' gradient computed and every compatible candidate probed once.
    ``truth``: repo id -> zoo model name."""
    import torch

    from db import open_store
    from mergekit_from.target_gradient import target_gradient
    from mergekit_from.taskzoo.hub import ServedZoo
    from zoo.crawler import Crawler
    from zoo.hub_server import HubServer
    from zoo.probe import candidates, probe

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("blank")
    served = ServedZoo(quick_taskzoo, tmp / "hub", blind=True)
    served.add_zoo_models()
    base = served.base_id
    truth = {rid: t["model"] for rid, t in served.truth.items() if rid != base}
    with HubServer(tmp / "hub") as hub:
        store = open_store(f"sqlite:///{tmp / 'zoo.sqlite'}")
        Crawler(store, hub.endpoint, token=False, cache_dir=tmp / "hf", progress=False).crawl_tree(base, recursive=True)
        files = {t: quick_taskzoo.calibration(t) for t in TASKS}
        grad = target_gradient(quick_taskzoo.base, base, None, files, cache=tmp / "gradients")
        cands = candidates(store, [r for r in truth if served.truth[r]["kind"] != "misfit"])
        hub.requests.clear()
        hub.served.clear()
        report = probe(store, grad, hub.endpoint, cands, token=False)
        served_bytes = (list(hub.requests), {rid: s.bytes + s.ranged_bytes for rid, s in hub.served.items()})
        yield SimpleNamespace(hub=hub, store=store, base=base, truth=truth, grad=grad, cands=cands, report=report,
                              served=served_bytes, tmp=tmp, files=files)
        store.close()


@pytest.mark.slow
def test_a_tasks_experts_outrank_irrelevant_candidates_on_alignment(blank):
    from zoo.scoring import score_target

    by_name = {blank.truth[r["repo_id"]]: r["cosines"] for r in blank.report.rows}
    for task in TASKS:
        others = [n for n in by_name if n.startswith("fft-") and n != f"fft-{task}"]
        assert all(by_name[f"fft-{task}"][task] > by_name[n][task] for n in others), (task, by_name)
        assert by_name[f"lora-{task}"][task] > max(by_name[f"lora-{o}"][task] for o in TASKS if o != task)
    # the blank cards give every candidate the same text score: the alignment decides the ranking
    scored = score_target(blank.store, blank.base, "a model for two tasks", gradient_key=blank.grad.key)
    rank = {blank.truth.get(c.repo_id, c.repo_id): i for i, c in enumerate(scored)}
    for task in TASKS:
        assert rank[f"fft-{task}"] < min(rank["fft-evens"], rank["fft-rotr"]), rank
    comp = next(c for c in scored if blank.truth.get(c.repo_id) == "fft-maxchar").components["alignment"]
    assert comp["value"] == 1.0 and set(comp["per_task"]) == set(TASKS) and comp["calls"] <= 5


@pytest.mark.slow
def test_bytes_served_per_candidate_stay_within_budget_and_five_requests(blank):
    requests, sent = blank.served
    model_bytes = blank.grad.model_bytes
    for row in blank.report.rows:
        rid = row["repo_id"]
        mine = [p for m, p, status in requests if re.match(rf"/{rid}/resolve/", p) and m == "GET"]
        served = sent.get(rid, 0)
        assert len(mine) == row["calls"] <= 5 and served == row["bytes_read"], (rid, mine, served, row)
        if row["kind"] == "model":
            header = served - sum(4 * math.prod(blank.grad.shapes[n][1:]) * k for n, k in blank.grad.subset.items())
            assert served <= blank.grad.budget_bytes + header and served <= 0.05 * row["full_bytes"], row
            assert header < 0.01 * row["full_bytes"]
        else:  # adapters are read whole, in one request
            assert row["calls"] == 1 and served == row["full_bytes"] < 0.2 * model_bytes


@pytest.mark.slow
def test_a_second_probe_probes_nothing_new_and_a_changed_candidate_again(blank):
    from zoo.probe import ProbeInput, probe

    blank.hub.requests.clear()
    again = probe(blank.store, blank.grad, blank.hub.endpoint, blank.cands, token=False)
    assert (again.probed, again.reused) == (0, len(blank.cands)) and not list(blank.hub.requests)
    first = blank.cands[0]
    moved = ProbeInput(first.repo_id, "0" * 40, first.kind, first.files, first.adapter_config)
    assert probe(blank.store, blank.grad, blank.hub.endpoint, [moved], token=False).probed == 1


@pytest.mark.slow
def test_gradient_is_cached_by_base_calibration_and_settings(blank, quick_taskzoo):
    from mergekit_from.target_gradient import target_gradient

    cache = blank.tmp / "gradients"
    same = target_gradient(quick_taskzoo.base, blank.base, None, blank.files, cache=cache)
    assert same.key == blank.grad.key and len(list(cache.iterdir())) == 1
    np.testing.assert_array_equal(same.grads["ends"][next(iter(same.subset))],
                                  blank.grad.grads["ends"][next(iter(same.subset))])
    other = target_gradient(quick_taskzoo.base, blank.base, None, blank.files, {"objective": "entropy"}, cache=cache)
    assert other.key != same.key and len(list(cache.iterdir())) == 2
    assert set(same.mass["ends"]) == set(same.shapes) and sum(same.nbytes.values()) == same.model_bytes


@pytest.mark.slow
def test_zoo_score_shows_and_explains_the_alignment(blank):
    import json

    from tests.fixtures.models import run_cli
    from zoo.scoring import score_target

    score_target(blank.store, blank.base, "two tasks", gradient_key=blank.grad.key)  # the target keeps its gradient
    db = f"sqlite:///{blank.tmp / 'zoo.sqlite'}"
    rows = [json.loads(line) for line in run_cli("zoo", "score", "--base", blank.base, "--target", "two tasks",
                                                 "--db", db, "--json").stdout.splitlines()]
    expert = next(r for r in rows if blank.truth.get(r["repo_id"]) == "fft-ends")["components"]["alignment"]
    probed = next(p for p in blank.report.rows if blank.truth[p["repo_id"]] == "fft-ends")
    assert expert["per_task"] == probed["cosines"] and expert["tensors"] == probed["tensors"]
    assert (expert["bytes_read"], expert["calls"], expert["full_bytes"]) == \
        (probed["bytes_read"], probed["calls"], probed["full_bytes"])
    text = run_cli("zoo", "score", "--base", blank.base, "--target", "two tasks", "--db", db).stdout
    assert "alignment=" in text and f"ends {probed['cosines']['ends']:+.3f}" in text


def test_a_rate_limited_probe_waits_and_goes_on(hub, hub_dir, crawled, tmp_path):
    """A 429 with RateLimit on a ranged read is retried under the crawler's policy; the probe completes."""
    import shutil

    import torch

    from mergekit_from.target_gradient import target_gradient
    from mergekit_from.taskzoo.tokenizer import CharVocab
    from tests.fixtures.hub_repos import BASE
    from zoo.probe import candidates, probe
    from zoo.resilience import RetryPolicy

    torch.set_num_threads(1)
    base = tmp_path / "base"
    shutil.copytree(hub_dir / BASE, base)
    CharVocab().save(base)
    calib = tmp_path / "math.jsonl"
    calib.write_text("".join('{"prompt": "%d+%d=", "response": "%d"}\n' % (i, i, 2 * i) for i in range(8)))
    grad = target_gradient(base, BASE, None, {"math": calib}, cache=tmp_path / "gradients")
    hub.inject(r"^/acme/tiny-llama-math/resolve/", 429, times=1, reset_s=0)
    hub.requests.clear()
    report = probe(crawled, grad, hub.endpoint, candidates(crawled, ["acme/tiny-llama-math"]), token=False,
                   retry=RetryPolicy(floor_s=0.01))
    rows = {r["repo_id"]: r for r in report.rows}
    assert all(r["error"] is None and set(r["cosines"]) == {"math"} for r in rows.values()), rows
    statuses = [s for _, p, s in hub.requests if p.startswith("/acme/tiny-llama-math/resolve/")]
    assert statuses.count(429) == 1 and len(statuses) == rows["acme/tiny-llama-math"]["calls"] + 1
