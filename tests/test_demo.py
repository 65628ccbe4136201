"""`mergekit-from demo --quick`: the embedded default end to end, on the quick task zoo."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures.models import run_cli


@pytest.mark.slow
def test_demo_end_to_end_on_the_quick_taskzoo(quick_taskzoo, tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--zoo", quick_taskzoo.root, "--out", out, "--labelled")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads((out / "demo.json").read_text())
    targets = summary["targets"]
    assert targets == quick_taskzoo.targets[: len(targets)] and len(targets) >= 2

    # the table: base, every target's expert, both merges; printed as well as saved
    rows = summary["accuracy"]
    assert list(rows) == ["base", *(f"expert {t}" for t in targets), "FroM merge (from)", "FW merge (fw_soft)"]
    assert all(set(acc) == set(targets) for acc in rows.values())
    assert "FW merge (fw_soft)" in result.stdout and "FW pool (labelled)" in result.stdout
    assert "read before download" in result.stdout and summary["candidates"] == len(summary["truth"]) - 1
    # auto's own count of its probes: the first run probes every compatible candidate, the second reuses them all
    first, second = summary["probes"]["FroM"], summary["probes"]["FW"]
    assert first["probed"] > len(targets) and (second["probed"], second["reused"]) == (0, first["probed"])
    assert 0 < first["bytes_read"] < 0.2 * first["full_bytes"] and first["share_max"] <= 0.05
    assert first["calls_max"] <= 5 and f"probed {first['probed']} candidates" in result.stdout

    # distractors are served but never enter a pool; every target's expert does
    d = summary["distractors"]
    for label, pool in summary["pool"].items():
        assert {f"taskzoo/fft-{t}" for t in targets} <= set(pool), label
        assert not {d["quantized"], d.get("other_vocabulary"), *d["gated"]} & set(pool), label
    fw = summary["coefficients"]["FW"]
    assert set(fw) == set(summary["pool"]["FW"]), fw
    # a target's LoRA adapter competes with its full expert in the FW pool: either may carry the task
    assert any(fw.get(f"taskzoo/{kind}-{t}", 0.0) > 0 for t in targets for kind in ("fft", "lora")), fw

    # FW merges the targets' skills: far above the base and the data-free FroM merge on the same pool
    def mean(row: str) -> float:
        return sum(rows[row].values()) / len(targets)

    assert mean("FW merge (fw_soft)") > max(mean("base"), mean("FroM merge (from)")) + 0.2, rows
    # with fw_soft's recipe defaults (the demo passes none): no target's calibration loss got worse
    assert json.loads((out / "merged-fw_soft" / "auto_run.json").read_text())["worse_than_base"] == []

    # each merge is a release folder: weights, the recipe it ran, a card that names the base; FW adds its trace
    for method in ("from", "fw_soft"):
        folder = out / f"merged-{method}"
        assert {"model.safetensors", "mergekit_config.yml", "README.md", "auto_run.json"} <= {
            p.name for p in folder.iterdir()}
        card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
        assert card["base_model"][0] == summary["base"]
    assert (out / "merged-fw_soft" / "fw_trace.json").is_file() and (out / "merged-fw_soft" / "fw_trace.png").is_file()
    # the recorded recipe re-runs from anywhere: its calibration data is copied next to it
    recorded = yaml.safe_load((out / "merged-fw_soft" / "mergekit_config.yml").read_text())
    assert all((out / "merged-fw_soft" / p).is_file() for p in recorded["fw_soft"]["targets"].values())


def _served_text(hub) -> str:
    """Every repo id and every text file the Hub folder serves (weights aside)."""
    parts = []
    for f in sorted(hub.rglob("*")):
        rel = f.relative_to(hub).as_posix()
        parts.append(rel)
        if f.is_file() and not f.name.endswith(".safetensors"):
            parts.append(f.read_text())
    return "\n".join(parts).lower()


def test_blind_hub_names_no_task(quick_taskzoo, tmp_path):
    from mergekit_from.demo import build_hub
    from mergekit_from.taskzoo.tasks import TASKS

    targets = quick_taskzoo.targets
    served, added = build_hub(quick_taskzoo, tmp_path / "hub", targets, blind=True)
    # no task of the zoo anywhere it serves; no task of any zoo in a repo id or card ("init", "length" are
    # also config keys); nothing that names the zoo or a task tag
    text = _served_text(tmp_path / "hub")
    assert not [t for t in quick_taskzoo.tasks if t in text], [t for t in quick_taskzoo.tasks if t in text]
    cards = "\n".join([*served.truth, *(f.read_text() for f in (tmp_path / "hub").rglob("README.md"))]).lower()
    assert not [t for t in TASKS if t in cards] and "taskzoo" not in text and "task:" not in text

    # the truth is kept aside: every repo served, each zoo model once, each target's expert findable
    repos = {p.parent.relative_to(tmp_path / "hub").as_posix() for p in (tmp_path / "hub").rglob("config.json")}
    repos |= {p.parent.relative_to(tmp_path / "hub").as_posix()
              for p in (tmp_path / "hub").rglob("adapter_config.json")}
    assert repos == set(served.truth)
    assert {served.truth[served.ids[f"fft-{t}"]]["task"] for t in targets} == set(targets)
    assert {d["model"] for d in served.truth.values()} >= set(quick_taskzoo.manifest["models"])
    # cards carry base_model only (the quantized copy also its declared relation); adapters name the served base
    card = (tmp_path / "hub" / served.ids[f"lora-{targets[0]}"] / "README.md").read_text()
    assert f"base_model: {served.base_id}" in card and "library_name" not in card and "tags" not in card
    adapter = json.loads((tmp_path / "hub" / served.ids[f"lora-{targets[0]}"] / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == served.base_id
    assert "base_model_relation: quantized" in (tmp_path / "hub" / added["quantized"] / "README.md").read_text()

    # labelled: the zoo's own ids and cards
    labelled, _ = build_hub(quick_taskzoo, tmp_path / "hub-l", targets, blind=False)
    assert labelled.ids[f"fft-{targets[0]}"] == f"taskzoo/fft-{targets[0]}"
    assert f"task:{targets[0]}" in (tmp_path / "hub-l" / f"taskzoo/fft-{targets[0]}" / "README.md").read_text()
    # the same names get the same neutral ids in every build
    again, _ = build_hub(quick_taskzoo, tmp_path / "hub-2", targets, blind=True)
    assert again.ids == served.ids
