"""`mergekit-from demo`: the embedded default, fully offline, end to end.

1. builds (or reuses) the task zoo: a pretrained base, experts per task, LoRA adapters, misfits;
2. serves it on a local Hub on 127.0.0.1 with distractors: irrelevant experts, LoRA adapters, a
   mislabelled model of another vocabulary, a quantized copy and a gated repo; blind by default
   (neutral repo ids, cards with ``base_model:`` only: the task of a repo is hidden from ``auto``
   and kept in ``demo.json``'s ``truth``), labelled (the zoo's ids and cards) with ``--labelled``;
3. crawls that Hub into a fresh SQLite store;
4. runs `auto` for a 4-task target from its description and calibration data, once with FroM
   and once with FW-Merging;
5. evaluates base, each target's expert and both merges, and prints the table, what ``auto``'s probes
   read of the candidates before downloading (as ``auto`` counted it), and the pool with FW's picks
   next to each candidate's hidden task.

Everything it writes (Hub folder, store, Hugging Face cache, merges with cards, ``demo.json``)
lands in ``--out``; the task zoo itself stays in its cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mergekit_from.report import Reporter
from mergekit_from.taskzoo.hub import NAMING_FILES, ServedZoo, link_files, reset

N_TARGETS = 4
ORG = "demo"


# Everything the demo writes into --out.
DEMO_ENTRIES = ("hub", "zoo.sqlite", "zoo.sqlite-wal", "zoo.sqlite-shm", "zoo.sqlite-journal", "hf-cache",
                "merged-from", "merged-fw_soft", "merged-fw_hard", "demo.json")


def build_hub(zoo, hub: Path, targets: list[str], blind: bool = True) -> tuple[ServedZoo, dict[str, Any]]:
    """A Hub folder: every zoo model, plus the distractors; blind (neutral ids, ``base_model:`` cards)
    or labelled (the zoo's ids and cards). Returns the served zoo (ids, hidden truth) and the distractors."""
    reset(hub)
    served = ServedZoo(zoo, hub, blind)
    served.add_zoo_models()
    first, irrelevant = targets[0], next(t for t in zoo.tasks if t not in targets)
    wide = next((n for n, e in zoo.manifest["models"].items() if e["kind"] == "misfit" and "vocab" in n), None)
    description = zoo.manifest["tasks"][first]["description"]
    added: dict[str, Any] = {"gated": {}}

    name = f"fft-{first}-q4"
    link_files(zoo.expert(first), served.folder(name, f"{ORG}/{name}", "quantized", first), skip=NAMING_FILES)
    served.card(name, served.base_id, f"A 4-bit quantized copy of the {first} expert ({description}).",
                relation="quantized", tags=["4-bit", f"task:{first}"])
    added["quantized"] = served.ids[name]

    name = f"fft-{irrelevant}-gated"
    link_files(zoo.expert(irrelevant), served.folder(name, f"{ORG}/{name}", "gated", irrelevant), skip=NAMING_FILES)
    served.card(name, served.base_id, f"A gated fine-tune for {irrelevant}.", tags=[f"task:{irrelevant}"])
    added["gated"] = {served.ids[name]: "manual"}

    if wide is not None:  # a model of another vocabulary whose card claims the base
        name = f"{wide}-{first}"
        link_files(zoo.model_dir(wide), served.folder(name, f"{ORG}/{name}", "misfit", first), skip=NAMING_FILES)
        served.card(name, served.base_id, f"Fine-tuned for {first} ({description}) with an extended tokenizer.",
                    tags=[f"task:{first}"])
        added["other_vocabulary"] = served.ids[name]
    return served, added


def describe(zoo, targets: list[str]) -> str:
    return "A model that can " + "; ".join(f"{t} ({zoo.manifest['tasks'][t]['description']})" for t in targets)


def run_demo(out: Path, quick: bool, method: str, settings: dict[str, Any], pool_size: int,
             zoo_dir: Path | None = None, overwrite: bool = False, reporter: Reporter = Reporter(),
             blind: bool = True) -> dict[str, Any]:
    from mergekit_from.auto import AutoRequest, run_auto
    from mergekit_from.methods import from_merge
    from mergekit_from.output import Output
    from mergekit_from.taskzoo import build_zoo
    from zoo.hub_server import HubServer

    start = time.perf_counter()
    # A demo folder written before outputs were marked is recognised by its demo.json.
    output = Output.check(out, "demo", [zoo_dir] if zoo_dir else [], overwrite or (out / "demo.json").is_file())
    out = output.claim(DEMO_ENTRIES)
    reporter.say("[1/5] task zoo")
    zoo = build_zoo(zoo_dir, quick=quick)
    targets = zoo.targets[:N_TARGETS]
    reporter.say(f"[2/5] serving {zoo.root} on a local Hub with distractors, "
                 + ("blind (neutral repo ids, cards with base_model: only)" if blind else "labelled"))
    served, added = build_hub(zoo, out / "hub", targets, blind)
    db = out / "zoo.sqlite"
    for stale in out.glob("zoo.sqlite*"):
        stale.unlink()
    target = describe(zoo, targets)
    calib = tuple(f"{t}={zoo.calibration(t)}" for t in targets)
    results: dict[str, Any] = {}
    with HubServer(out / "hub", gated=added["gated"]) as hub:
        for step, (label, m) in enumerate((("FroM", from_merge.spec.name), ("FW", method)), start=3):
            reporter.say(f"[{step}/5] auto --method {m}" + (" (crawls the Hub first)" if step == 3 else ""))
            req = AutoRequest(base=served.base_id, target=target, out=out / f"merged-{m}", calib=calib,
                              endpoint=hub.endpoint, db_url=f"sqlite:///{db}", pool_size=pool_size, method=m,
                              settings=settings if m != from_merge.spec.name else {},
                              cache_dir=out / "hf-cache")
            results[label] = run_auto(req)
    summary = {
        "target": target, "targets": targets, "base": served.base_id, "blind": blind,
        "accuracy": evaluate_table(zoo, targets, results, reporter),
        "pool": {label: [m.repo_id for m in r.pool] for label, r in results.items()},
        "scores": {label: {m.repo_id: m.score for m in r.pool} for label, r in results.items()},
        "fw_pick_share": results["FW"].pick_share,
        "coefficients": {label: r.coefficients for label, r in results.items()},
        "experts": {t: served.ids[f"fft-{t}"] for t in targets}, "truth": served.truth,
        "probes": {label: r.probes for label, r in results.items()}, "candidates": len(served.truth) - 1,
        "distractors": added, "wall_s": time.perf_counter() - start,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate_table(zoo, targets: list[str], results: dict[str, Any], reporter: Reporter) -> dict[str, dict[str, float]]:
    """Exact match on the test split: base, each target's expert, each merge."""
    from mergekit_from.taskzoo import evaluate

    reporter.say("[5/5] evaluating (exact match on the test split)")
    n = zoo.manifest["spec"].get("eval_n", 200)
    rows = {"base": evaluate(zoo.base, targets, n=n)}
    for t in targets:
        rows[f"expert {t}"] = evaluate(zoo.expert(t), targets, n=n, tokenizer_dir=zoo.base)
    for label, r in results.items():
        rows[f"{label} merge ({r.out.name.removeprefix('merged-')})"] = evaluate(r.out, targets, n=n)
    return rows
