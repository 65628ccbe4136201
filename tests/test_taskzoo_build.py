"""The quick task zoo end to end: build, model folders, evaluator, a FroM merge, the CLI, the benchmark."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_from.calibration import read_jsonl
from mergekit_from.cli import main
from mergekit_from.taskzoo import build_zoo, evaluate, load_manifest, load_model
from mergekit_from.taskzoo.evaluate import accuracy, predict
from mergekit_from.taskzoo.tasks import examples


def _card_metadata(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_quick_taskzoo_folders_are_hub_style(quick_taskzoo):
    zoo = quick_taskzoo
    assert load_manifest(zoo.root).manifest == zoo.manifest
    models = zoo.manifest["models"]
    for task in zoo.tasks:
        assert f"fft-{task}" in models
        assert read_jsonl(zoo.calibration(task)) == examples(task, "calibration", len(read_jsonl(zoo.calibration(task))))
    for task in zoo.targets:
        adapter = zoo.expert(task, "lora")
        assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
        assert _card_metadata(adapter)["base_model"] == "taskzoo/base"
    for name, entry in models.items():
        folder = zoo.model_dir(name)
        assert (folder / "tokenizer.json").is_file() and (folder / "README.md").is_file()
        meta = _card_metadata(folder)
        assert meta.get("base_model") == entry["base_model"]
        if entry["task"]:
            assert f"task:{entry['task']}" in meta["tags"]
        if entry["kind"] != "lora":
            assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert models["base-b-fft-" + zoo.targets[0]]["base_model"] == "taskzoo/base-b"
    assert {e["kind"] for e in models.values()} == {"base", "fft", "lora", "misfit"}


def test_manifest_is_strict_json(quick_taskzoo):
    def refuse(constant):
        raise ValueError(f"bare {constant} in manifest.json")

    manifest = json.loads((quick_taskzoo.root / "manifest.json").read_text(), parse_constant=refuse)
    base = manifest["models"]["base"]["train"]
    assert base["probe"] is None and base["probe_note"] == "no probe: trained for the full schedule"


def test_models_folder_serves_as_a_hub_unchanged(quick_taskzoo):
    """``models/`` is a Hub layout: each folder is found under the repo id the manifest and cards name."""
    from zoo.local_repos import Catalog

    catalog = Catalog(quick_taskzoo.root / "models")
    entries = quick_taskzoo.manifest["models"].values()
    assert {r.repo_id for r in catalog.all()} == {e["repo_id"] for e in entries}
    for entry in entries:
        repo = catalog.get(entry["repo_id"])
        assert repo.base_models == ([entry["base_model"]] if entry["base_model"] else [])


def test_misfits_cannot_merge_with_base(quick_taskzoo):
    from mergekit_from.errors import ModelInputError
    from mergekit_from.weights import TensorIndex

    base = TensorIndex.open(quick_taskzoo.base)
    with pytest.raises(ModelInputError, match="incompatible"):
        base.check_compatible(TensorIndex.open(quick_taskzoo.model_dir("hidden-32")), label="hidden-32")
    wide = json.loads((quick_taskzoo.model_dir("vocab-wide") / "config.json").read_text())["vocab_size"]
    assert wide > json.loads((quick_taskzoo.base / "config.json").read_text())["vocab_size"]
    assert "incompatible" in quick_taskzoo.manifest["models"]["vocab-wide"]


def test_experts_beat_base_and_manifest_numbers_reproduce(quick_taskzoo):
    zoo = quick_taskzoo
    base = zoo.accuracy("base")
    for task in zoo.targets:
        expert = zoo.accuracy(f"fft-{task}")[task]
        assert expert > base[task] + 0.3, (task, expert, base[task])
        n = zoo.manifest["spec"]["eval_n"]
        assert evaluate(zoo.expert(task), [task], n)[task] == expert  # fresh load, same number


def _greedy_by_hand(model, tokenizer, prompt, limit):
    """One prompt, no batching, no cache, no generate(): argmax token by token."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(limit):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(out)


def test_evaluator_equals_hand_count(quick_taskzoo):
    task = quick_taskzoo.targets[0]
    model, tok = load_model(quick_taskzoo.expert(task))
    pairs = examples(task, "test", 12)
    # corrupt a third of the references so that the count is neither 0 nor 12 by construction
    pairs = [(p, r if i % 3 else r + "a") for i, (p, r) in enumerate(pairs)]
    by_hand = sum(_greedy_by_hand(model, tok, p, 10) == r for p, r in pairs)
    assert 0 < by_hand < len(pairs)
    assert accuracy(model, tok, pairs, batch_size=5) == by_hand / len(pairs)
    preds = predict(model, tok, [p for p, _ in pairs], 10, batch_size=7)
    assert preds == [_greedy_by_hand(model, tok, p, 10) for p, _ in pairs]


def _from_recipe(tmp_path, zoo, weights):
    recipe = {
        "merge_method": "from",
        "base_model": str(zoo.base),
        "models": [{"model": str(zoo.expert(t)), "parameters": {"weight": w}} for t, w in zip(zoo.targets, weights)],
        "parameters": {"k": 2.0},
        "dtype": "float32",
    }
    path = tmp_path / f"from-{'-'.join(map(str, weights))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_from_merge_of_two_experts_evaluates_end_to_end(quick_taskzoo, tmp_path):
    from mergekit.options import MergeOptions

    from mergekit_from.recipe import run_recipe

    zoo, tasks = quick_taskzoo, quick_taskzoo.targets[:2]
    options = MergeOptions(copy_tokenizer=False, quiet=True)
    merged = run_recipe(_from_recipe(tmp_path, zoo, [1.0, 1.0]), tmp_path / "merged", options)
    assert not (merged / "tokenizer.json").exists()
    with pytest.raises(Exception, match="no tokenizer"):
        evaluate(merged, tasks, 16)
    acc = evaluate(merged, tasks, 16, tokenizer_dir=zoo.base)
    assert set(acc) == set(tasks) and all(0.0 <= a <= 1.0 for a in acc.values())
    # the scores tell models apart: the first expert beats the base on its own task, the merge is neither
    base, first = evaluate(zoo.base, tasks, 16), evaluate(zoo.expert(tasks[0]), tasks, 16)
    assert first[tasks[0]] > base[tasks[0]] + 0.3, (first, base)
    assert acc != base and acc != first
    # a prior of 0 drops the second expert: the merge is exactly the first expert again
    only_first = run_recipe(_from_recipe(tmp_path, zoo, [1.0, 0.0]), tmp_path / "only-first", options)
    assert evaluate(only_first, tasks, 16, tokenizer_dir=zoo.base) == first


def test_eval_cli(quick_taskzoo):
    runner = CliRunner()
    task = quick_taskzoo.targets[0]
    res = runner.invoke(main, ["eval", str(quick_taskzoo.expert(task)), "--tasks", task, "--n", "16", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["accuracy"] == evaluate(quick_taskzoo.expert(task), [task], 16)
    res = runner.invoke(main, ["eval", str(quick_taskzoo.expert(task, "lora")), "--tasks", task, "--n", "16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", str(quick_taskzoo.base), "--tasks", "nosuchtask"])
    assert res.exit_code == 2 and "unknown task 'nosuchtask'" in res.output


def test_build_reuses_the_cached_zoo(quick_taskzoo):
    res = CliRunner().invoke(main, ["taskzoo", "build", "--quick", "--out", str(quick_taskzoo.root)])
    assert res.exit_code == 0, res.output
    assert str(quick_taskzoo.root) in res.output


def load_benchmark(name: str = "quality"):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quality_benchmark_quick(quick_taskzoo, tmp_path):
    quality = load_benchmark()
    data = quality.main(["--out", str(tmp_path), "--quick", "--zoo", str(quick_taskzoo.root), "--n", "16",
                         "--only", "fft2,lora2"])
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["settings"] == data["settings"]
    st = saved["settings"]["fft2"]
    assert st["tasks"] == quick_taskzoo.targets[:2]
    for label, m in st["methods"].items():
        fw = {"picks"} if label.startswith("fw_") else set()  # FW rows add what they picked
        assert set(m) == {"method", "params", "acc", "normalized_mean", "seconds", "peak_rss_mb", "start_rss_mb"} | fw
        assert m["seconds"] > 0 and m["peak_rss_mb"] > 0, (label, m["seconds"], m["peak_rss_mb"])
        expected = sum(m["acc"][t] / st["experts"][t] for t in st["tasks"]) / len(st["tasks"])
        assert m["normalized_mean"] == pytest.approx(expected, abs=1e-4)
    assert st["methods"]["task_arithmetic (λ tuned on test)"]["params"]["tuned_on"] == "test"
    lora = saved["settings"]["lora2"]
    assert lora["experts"] == {t: evaluate(quick_taskzoo.expert(t, "lora"), [t], 16)[t] for t in lora["tasks"]}
    assert "task_arithmetic (λ tuned on test)" in lora["methods"]
    assert (tmp_path / "quality.md").read_text().startswith("# Merge quality")
    assert (tmp_path / "quality.png").stat().st_size > 0
    # two runs of disjoint slices (one process per core) join into one report
    for name in ("fft2", "lora2"):
        (tmp_path / name).mkdir()
        part = {"settings": {name: saved["settings"][name]}, "meta": saved["meta"]}
        (tmp_path / name / "quality.json").write_text(json.dumps(part))
    joined = quality.main(["--out", str(tmp_path / "joined"), "--combine", str(tmp_path / "fft2"),
                           str(tmp_path / "lora2")])
    assert joined["settings"] == saved["settings"]
    assert joined["meta"]["seconds"]["total"] == pytest.approx(2 * saved["meta"]["seconds"]["total"], abs=0.11)
    table = (tmp_path / "joined" / "quality.md").read_text().split("\n\n")[2]
    assert table == (tmp_path / "quality.md").read_text().split("\n\n")[2]  # the main table, both settings
    with pytest.raises(SystemExit, match="'dare_ties' of setting 'fft2' is in more than one run"):
        quality.main(["--out", str(tmp_path / "j2"), "--combine", str(tmp_path / "fft2"), str(tmp_path)])
    # a method run later on the same setting joins its rows; a setting measured differently does not join
    first, later = dict(saved["settings"]["fft2"]), dict(saved["settings"]["fft2"])
    first["methods"] = dict(list(first["methods"].items())[:2])
    later["methods"] = dict(list(later["methods"].items())[2:])
    for name, st in (("first", first), ("later", later)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "quality.json").write_text(json.dumps({"settings": {"fft2": st}, "meta": saved["meta"]}))
    joined = quality.main(["--out", str(tmp_path / "j3"), "--combine", str(tmp_path / "first"), str(tmp_path / "later")])
    assert joined["settings"]["fft2"] == saved["settings"]["fft2"]
    later["experts"] = {t: 0.5 for t in later["experts"]}
    (tmp_path / "later" / "quality.json").write_text(json.dumps({"settings": {"fft2": later}, "meta": saved["meta"]}))
    with pytest.raises(SystemExit, match="setting 'fft2' differs between runs"):
        quality.main(["--out", str(tmp_path / "j4"), "--combine", str(tmp_path / "first"), str(tmp_path / "later")])


@pytest.mark.slow
def test_quality_benchmark_keeps_each_finished_method(quick_taskzoo, tmp_path, monkeypatch):
    quality = load_benchmark()
    real = quality.Bench.merge_and_eval
    calls = []

    def merge_then_cut(self, setting, run):
        if calls:
            raise KeyboardInterrupt  # the session is cut off during the second merge
        calls.append(run.label)
        return real(self, setting, run)

    monkeypatch.setattr(quality.Bench, "merge_and_eval", merge_then_cut)
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--out", str(tmp_path), "--quick", "--zoo", str(quick_taskzoo.root), "--n", "4",
                      "--only", "fft2", "--methods", "linear,ties"])
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert list(saved["settings"]["fft2"]["methods"]) == calls == ["linear"]


def test_scaling_leaves_a_method_out_of_the_pools_it_did_not_run_on(tmp_path):
    quality = load_benchmark()

    def setting(pool: int, scores: dict[str, float | None]) -> dict:
        return {"tasks": ["a"], "pool": [f"m{i}" for i in range(pool)], "base": {"a": 0.0}, "experts": {"a": 1.0},
                "methods": {label: {"normalized_mean": v} for label, v in scores.items()}}

    data = {"settings": {"irrelevance4": setting(4, {"ties": 0.8, "fw_soft": 0.9}),
                         "irrelevance16": setting(16, {"ties": 0.2, "fw_soft": None})}}
    data["settings"]["irrelevance8"] = setting(8, {"ties": 0.5, "adamerging": 0.6})
    curves = quality.scaling(data)["irrelevance"]["methods"]
    assert curves["adamerging"] == {"by_pool": {"8": 0.6}, "ratio_largest_over_smallest": None}
    assert curves["ties"]["ratio_largest_over_smallest"] == 0.25 and curves["fw_soft"]["by_pool"]["16"] is None
    data["meta"] = {"n": 32, "real": True, "scaling": quality.scaling(data), "data_methods": {}, "zoo": "z",
                    "seconds": {"total": 1.0, "merge": 1.0, "eval": 0.0}}
    quality.write_markdown(tmp_path / "q.md", data)
    rows = (tmp_path / "q.md").read_text().split("## Scaling: irrelevance")[1].splitlines()
    assert "| adamerging | — | 0.600 | — | — |" in rows and "| fw_soft | 0.900 | — | failed | — |" in rows


def test_quality_scaling_settings_quick(quick_taskzoo, tmp_path):
    quality = load_benchmark()
    data = quality.main(["--out", str(tmp_path), "--quick", "--zoo", str(quick_taskzoo.root), "--n", "16",
                         "--only", "irrelevance2,irrelevance4,relevance4"])
    sets = data["settings"]
    targets = quick_taskzoo.targets[:2]
    assert [sets[s]["pool"][:2] for s in sets] == [targets] * 3
    assert sets["irrelevance4"]["tasks"] == targets and len(sets["irrelevance4"]["pool"]) == 4
    assert sets["relevance4"]["tasks"] == sets["relevance4"]["pool"]
    assert set(sets["relevance4"]["pool"]) == set(quick_taskzoo.tasks)
    for st in sets.values():
        assert {"ties", "fw_hard init=task_arithmetic", "fw_hard init=from", "fw_soft"} <= set(st["methods"])
        for label, m in st["methods"].items():
            assert set(m["acc"]) == set(st["tasks"]) and m["seconds"] > 0
            if label.startswith("fw_"):  # each iteration's picks, by the pool models' folder names
                assert m["picks"] and all(p and all(n.startswith("fft-") and 0 < v <= 1 for n, v in p.items())
                                          for p in m["picks"]), m["picks"]
            else:
                assert "picks" not in m
    assert sets["irrelevance4"]["methods"]["fw_hard init=from"]["params"]["init"] == "from"
    # the data-informed recipes read calibration files only, and the FW objective only the targets'
    recipes = list((tmp_path / "work" / "recipes").rglob("*.yaml"))
    assert recipes and not any("test.jsonl" in r.read_text() for r in recipes)
    fw = (tmp_path / "work" / "recipes" / "irrelevance4" / "fw_soft.yaml").read_text()
    assert all(str(quick_taskzoo.calibration(t)) in fw for t in targets)
    assert not any(str(quick_taskzoo.calibration(t)) in fw for t in quick_taskzoo.tasks if t not in targets)
    irr = data["meta"]["scaling"]["irrelevance"]
    assert irr["pools"] == [2, 4]
    c = irr["methods"]["fw_soft"]
    assert c["ratio_largest_over_smallest"] == pytest.approx(c["by_pool"]["4"] / c["by_pool"]["2"], abs=1e-4)
    assert "## Scaling: irrelevance" in (tmp_path / "quality.md").read_text()
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_real_settings_pools():
    from mergekit_from.realzoo import TARGET_TASKS, TASKS
    from mergekit_from.taskzoo import Zoo

    quality = load_benchmark()
    zoo = Zoo(Path("/nonexistent"), {"tasks": dict.fromkeys(TASKS), "target_tasks": list(TARGET_TASKS)})
    sets = {s.name: s for s in quality.real_settings(zoo)}
    assert [n for n in sets if not n.startswith("irrelevance")] == ["fft2", "fft4", "fft8", "lora2", "lora4", "lora8"]
    assert sets["lora8"].tasks == TARGET_TASKS and sets["fft4"].data_methods and not sets["fft8"].data_methods
    irr = [sets[f"irrelevance{n}"] for n in (4, 8, 16)]
    assert all(s.tasks == TARGET_TASKS[:4] for s in irr)
    assert [len(s.pool_names()) for s in irr] == [4, 8, 16]
    assert irr[0].pool == sets["fft4"].pool  # irrelevance4 is fft4: the bench reuses its merges
    # 12 full fine-tunes (every task once), then the adapters of targets 5-8
    assert sorted(irr[2].pool) == sorted(TASKS) and irr[2].adapters == TARGET_TASKS[4:]
    assert irr[2].pool_names()[-1] == f"lora-{TARGET_TASKS[-1]}"
    # RegMean (forward passes only) on every setting; FW and AdaMerging on the 4-target ones
    zoo = Zoo(Path("/nonexistent"), {"tasks": {t: {"calibration": f"{t}.jsonl"} for t in TASKS},
                                     "target_tasks": list(TARGET_TASKS)})
    for name, st in sets.items():
        methods = {e.label.split()[0] for e in st.entries(zoo, quality.REAL_DATA)}
        assert "regmean" in methods, name
        assert ("fw_soft" in methods) == (name in ("fft4", "lora4") or name.startswith("irrelevance")), name


def test_regmean_run_pairs_each_model_with_its_own_calibration():
    from mergekit_from.realzoo import TARGET_TASKS, TASKS
    from mergekit_from.taskzoo import Zoo

    quality = load_benchmark()
    tasks = {t: {"calibration": f"data/{t}/calibration.jsonl"} for t in TASKS}
    zoo = Zoo(Path("/nonexistent"), {"tasks": tasks, "target_tasks": list(TARGET_TASKS)})
    lora4 = next(s for s in quality.real_settings(zoo) if s.name == "lora4")
    # listing the runs folds no adapter (there is none here): only a RegMean merge needs the folded copies
    regmean = next(e for e in lora4.entries(zoo, quality.REAL_DATA) if e.label.startswith("regmean"))
    recipe = regmean.recipe("base", ["m1", "m2"], ["c1", "c2"])
    assert recipe["regmean"] == {"calibration": {"m1": "c1", "m2": "c2"}}
    assert recipe["models"] == [{"model": "m1"}, {"model": "m2"}]  # a pre-pass method takes no weights


def test_fw_step_probe_ends_on_the_vertex(quick_taskzoo):
    targets = quick_taskzoo.targets[:2]
    rows = load_benchmark("fw_step_probe").probe(quick_taskzoo, targets, 0.3, targets[0], [0.0, 1.0], n=16)
    assert [r["c"] for r in rows] == [0.0, 1.0]
    # c = 1 is the expert itself
    assert rows[1]["accuracy"] == evaluate(quick_taskzoo.expert(targets[0]), targets, 16, tokenizer_dir=quick_taskzoo.base)
    assert all(r["mean"] == pytest.approx(sum(r["accuracy"].values()) / 2, abs=1e-4) for r in rows)


def test_folded_lora_expert_scores_like_the_adapter(quick_taskzoo):
    quality = load_benchmark()
    task = quick_taskzoo.targets[0]
    folded = quality.fold_lora(quick_taskzoo, task)
    assert quality.fold_lora(quick_taskzoo, task) == folded  # cached
    assert not (folded / "adapter_config.json").exists() and list(folded.glob("*.safetensors"))
    assert evaluate(folded, [task], 32) == evaluate(quick_taskzoo.expert(task, "lora"), [task], 32)


def test_rebuild_with_other_settings_reuses_what_still_matches(quick_taskzoo, tmp_path):
    import dataclasses
    import shutil

    from mergekit_from.taskzoo import QUICK

    root = tmp_path / "zoo"
    shutil.copytree(quick_taskzoo.root, root)
    base_weights = root / "models" / "taskzoo" / "base" / "model.safetensors"
    before = base_weights.stat().st_mtime_ns
    spec = dataclasses.replace(QUICK, misfit=dataclasses.replace(QUICK.misfit, steps=7))
    zoo = build_zoo(root, spec=spec)
    assert base_weights.stat().st_mtime_ns == before  # base and experts reused
    assert zoo.manifest["models"]["fft-ends"] == quick_taskzoo.manifest["models"]["fft-ends"]
    assert zoo.manifest["models"]["vocab-wide"]["train"]["steps"] == 7  # misfits retrained
    assert zoo.manifest["spec"]["misfit"]["steps"] == 7
