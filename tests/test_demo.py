"""`mergekit-from demo --quick`: the embedded default end to end, on the quick task zoo."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures.models import run_cli


@pytest.mark.slow
def test_demo_end_to_end_on_the_quick_taskzoo(quick_taskzoo, tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--zoo", quick_taskzoo.root, "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads((out / "demo.json").read_text())
    targets = summary["targets"]
    assert targets == quick_taskzoo.targets[: len(targets)] and len(targets) >= 2

    # the table: base, every target's expert, both merges; printed as well as saved
    rows = summary["accuracy"]
    assert list(rows) == ["base", *(f"expert {t}" for t in targets), "FroM merge (from)", "FW merge (fw_soft)"]
    assert all(set(acc) == set(targets) for acc in rows.values())
    assert "FW merge (fw_soft)" in result.stdout and "FW pool and picks" in result.stdout

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
