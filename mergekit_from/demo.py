"""`mergekit-from demo`: the embedded default, fully offline, end to end.

1. builds (or reuses) the task zoo: a pretrained base, experts per task, LoRA adapters, misfits;
2. serves it on a local Hub on 127.0.0.1 with distractors: irrelevant experts, LoRA adapters, a
   mislabelled model of another vocabulary, a quantized-tagged copy and a gated repo;
3. crawls that Hub into a fresh SQLite store;
4. runs `auto` for a 4-task target from its description and calibration data, once with FroM
   and once with FW-Merging;
5. evaluates base, each target's expert and both merges, and prints the table.

Everything it writes (Hub folder, store, Hugging Face cache, merges with cards, ``demo.json``)
lands in ``--out``; the task zoo itself stays in its cache.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from mergekit_from.card import write_card
from mergekit_from.report import Reporter

N_TARGETS = 4
ORG = "demo"


# Everything the demo writes into --out.
DEMO_ENTRIES = ("hub", "zoo.sqlite", "zoo.sqlite-wal", "zoo.sqlite-shm", "zoo.sqlite-journal", "hf-cache",
                "merged-from", "merged-fw_soft", "merged-fw_hard", "demo.json")


def _link_files(src: Path, dst: Path, skip: tuple[str, ...] = ("README.md",)) -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            (dst / f.name).symlink_to(f.resolve())


def _card(hub: Path, repo_id: str, body: str, **metadata: Any) -> None:
    write_card(hub / repo_id, f"# {repo_id}\n\n{body}", **metadata)


def build_hub(zoo, hub: Path, targets: list[str]) -> dict[str, Any]:
    """A Hub folder: every zoo model under its repo id, plus the distractors. Returns what was added."""
    if hub.exists():
        shutil.rmtree(hub)
    for name, entry in zoo.manifest["models"].items():
        dst = hub / entry["repo_id"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(zoo.model_dir(name))
    base_id = zoo.manifest["models"]["base"]["repo_id"]
    first, irrelevant = targets[0], next(t for t in zoo.tasks if t not in targets)
    wide = next((n for n, e in zoo.manifest["models"].items() if e["kind"] == "misfit" and "vocab" in n), None)
    added: dict[str, Any] = {"gated": {}}

    quantized = f"{ORG}/fft-{first}-q4"
    _link_files(zoo.expert(first), hub / quantized)
    _card(hub, quantized, f"A 4-bit quantized copy of the {first} expert "
          f"({zoo.manifest['tasks'][first]['description']}).",
          base_model=base_id, base_model_relation="quantized", tags=["4-bit", f"task:{first}"])
    added["quantized"] = quantized

    gated = f"{ORG}/fft-{irrelevant}-gated"
    _link_files(zoo.expert(irrelevant), hub / gated)
    _card(hub, gated, f"A gated fine-tune for {irrelevant}.", base_model=base_id, tags=[f"task:{irrelevant}"])
    added["gated"] = {gated: "manual"}

    if wide is not None:  # a model of another vocabulary whose card claims the base
        mislabelled = f"{ORG}/{wide}-{first}"
        _link_files(zoo.model_dir(wide), hub / mislabelled)
        _card(hub, mislabelled, f"Fine-tuned for {first} ({zoo.manifest['tasks'][first]['description']}) "
              "with an extended tokenizer.", base_model=base_id, tags=[f"task:{first}"])
        added["other_vocabulary"] = mislabelled
    return added


def describe(zoo, targets: list[str]) -> str:
    return "A model that can " + "; ".join(f"{t} ({zoo.manifest['tasks'][t]['description']})" for t in targets)


def run_demo(out: Path, quick: bool, method: str, settings: dict[str, Any], pool_size: int,
             zoo_dir: Path | None = None, overwrite: bool = False, reporter: Reporter = Reporter()) -> dict[str, Any]:
    from mergekit_from.auto import AutoRequest, run_auto
    from mergekit_from.methods import from_merge
    from mergekit_from.output import Output
    from mergekit_from.taskzoo import build_zoo, evaluate
    from zoo.hub_server import HubServer

    start = time.perf_counter()
    # A demo folder written before outputs were marked is recognised by its demo.json.
    output = Output.check(out, "demo", [zoo_dir] if zoo_dir else [], overwrite or (out / "demo.json").is_file())
    out = output.claim(DEMO_ENTRIES)
    reporter.say("[1/5] task zoo")
    zoo = build_zoo(zoo_dir, quick=quick)
    targets = zoo.targets[:N_TARGETS]
    reporter.say(f"[2/5] serving {zoo.root} on a local Hub with distractors")
    added = build_hub(zoo, out / "hub", targets)
    db = out / "zoo.sqlite"
    for stale in out.glob("zoo.sqlite*"):
        stale.unlink()
    base_id = zoo.manifest["models"]["base"]["repo_id"]
    target = describe(zoo, targets)
    calib = tuple(f"{t}={zoo.calibration(t)}" for t in targets)
    results: dict[str, Any] = {}
    with HubServer(out / "hub", gated=added["gated"]) as hub:
        for step, (label, m) in enumerate((("FroM", from_merge.spec.name), ("FW", method)), start=3):
            reporter.say(f"[{step}/5] auto --method {m}" + (" (crawls the Hub first)" if step == 3 else ""))
            req = AutoRequest(base=base_id, target=target, out=out / f"merged-{m}", calib=calib, endpoint=hub.endpoint,
                              db_url=f"sqlite:///{db}", pool_size=pool_size, method=m,
                              settings=settings if m != from_merge.spec.name else {},
                              cache_dir=out / "hf-cache")
            results[label] = run_auto(req)
    reporter.say("[5/5] evaluating (exact match on the test split)")
    n = zoo.manifest["spec"].get("eval_n", 200)
    rows = {"base": evaluate(zoo.base, targets, n=n)}
    for t in targets:
        rows[f"expert {t}"] = evaluate(zoo.expert(t), targets, n=n, tokenizer_dir=zoo.base)
    for label, r in results.items():
        rows[f"{label} merge ({r.out.name.removeprefix('merged-')})"] = evaluate(r.out, targets, n=n)
    fw = results["FW"]
    summary = {
        "target": target, "targets": targets, "base": base_id, "accuracy": rows,
        "pool": {label: [m.repo_id for m in r.pool] for label, r in results.items()},
        "fw_pick_share": fw.pick_share, "coefficients": {label: r.coefficients for label, r in results.items()},
        "distractors": added, "wall_s": time.perf_counter() - start,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    return summary
