"""FW's pool from a Hub whose tasks are unknown: blind (neutral ids, ``base_model:`` cards) vs labelled.

    PYTHONPATH=. nice python benchmarks/blind_pool.py --out out/blind-pool [--quick] [--zoo DIR] [--candidates 100]

Serves the task zoo on a local Hub twice, blind and labelled (``mergekit_from/taskzoo/hub.py``, the
demo's Hub with its quantized, gated and other-vocabulary distractors), each time with irrelevant
candidates added up to ``--candidates``: perturbed copies of the non-target experts (their task
vector's RMS x ``--noise`` of seeded Gaussian noise) and LoRA adapters from those copies (PEFT,
the SVD of the task vector at the zoo's LoRA rank). On each Hub it runs ``mergekit-from auto
--method fw_soft`` for the zoo's targets (the demo's choice, up to 4), in a subprocess, passing
``--max-probe`` only where ``auto --help`` lists it, then evaluates the merge (exact match on the
test split, normalized by each target's expert as ``benchmarks/quality.py`` does).

Measured: target coverage (a target's full or LoRA expert in the pool), normalized accuracy blind
vs labelled, what ``auto``'s probes read per candidate before download (their own count, in
``auto_run.json``: bytes against the weights' size, resolver calls, the probe wall time for the
whole pool), checked against what the local Hub served (ranged bytes, resolver calls and
``HfFileSystem``'s API calls of candidates never downloaded), and FW seconds per iteration against pool size
(``fw_trace.json``; extra labelled runs at ``--pool-sizes``). Writes ``blind_pool.json`` and
``blind_pool.png`` into ``--out`` and prints the table with the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quality import normalized_mean  # noqa: E402

from mergekit_from.demo import N_TARGETS, build_hub, describe  # noqa: E402
from mergekit_from.taskzoo import Zoo, build_zoo, evaluate  # noqa: E402
from mergekit_from.taskzoo.hub import ServedZoo, link_files, perturbed_copy, reset, svd_adapter  # noqa: E402

MODES = ("blind", "labelled")
TARGETS = {"coverage": 1.0, "blind_over_labelled": 0.95, "bytes_share_max": 0.05, "calls_max": 5,
           "probe_s": 60.0}


def make_distractors(zoo: Zoo, folder: Path, n: int, noise: float) -> list[tuple[str, str, str]]:
    """``n`` irrelevant candidates, alternately a perturbed copy of a non-target expert and a LoRA adapter
    of that copy; returns (name, kind, task). Reused when ``folder`` already holds them."""
    irrelevant = [t for t in zoo.tasks if t not in zoo.targets[:N_TARGETS]]
    rank = zoo.manifest["spec"]["lora_rank"]
    made = []
    for i in range((n + 1) // 2):
        task = irrelevant[i % len(irrelevant)]
        copy, adapter = folder / f"fft-{task}-copy{i}", folder / f"lora-{task}-svd{i}"
        if not copy.is_dir():
            perturbed_copy(zoo.expert(task), zoo.base, copy, noise, seed=i)
        if not adapter.is_dir():
            svd_adapter(copy, zoo.base, adapter, rank, base_id=zoo.manifest["models"]["base"]["repo_id"])
        made += [(copy.name, "fft-copy", task), (adapter.name, "lora-svd", task)]
    return made[:n]


def serve_distractors(served: ServedZoo, folder: Path, made: list[tuple[str, str, str]]) -> None:
    for name, kind, task in made:
        dst = served.folder(name, f"distract/{name}", kind, task)
        link_files(folder / name, dst, skip=("README.md",), base_id=served.base_id)
        what = "perturbed copy of the expert" if kind == "fft-copy" else "LoRA adapter (SVD) of a copy of the expert"
        served.card(name, served.base_id, f"A {what} for {task} ({served.zoo.manifest['tasks'][task]['description']}).",
                    tags=[f"task:{task}"])


def auto_lists_max_probe() -> bool:
    out = subprocess.run([sys.executable, "-m", "mergekit_from.cli", "auto", "--help"], capture_output=True,
                         text=True, env=_env(), check=True).stdout
    return "--max-probe" in out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_auto(zoo: Zoo, served: ServedZoo, endpoint: str, out: Path, db: Path, pool_size: int,
             max_probe: int | None) -> float:
    targets = zoo.targets[:N_TARGETS]
    cmd = [sys.executable, "-m", "mergekit_from.cli", "auto", "--base", served.base_id,
           "--target", describe(zoo, targets), "--out", str(out), "--endpoint", endpoint, "--db", f"sqlite:///{db}",
           "--pool-size", str(pool_size), "--method", "fw_soft", "--cache-dir", str(out.parent / "hf-cache"),
           "--overwrite", *[a for t in targets for a in ("--calib", f"{t}={zoo.calibration(t)}")]]
    if max_probe is not None:
        cmd += ["--max-probe", str(max_probe)]
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(), check=True)
    return time.perf_counter() - start


def fw_timing(folder: Path) -> dict[str, Any]:
    trace = json.loads((folder / "fw_trace.json").read_text())
    secs = [it["seconds"] for it in trace["iterations"] if it.get("seconds") is not None]
    return {"pool": len(trace["pool"]), "s_per_iter": statistics.median(secs) if secs else None}


def probe_rows(db: Path) -> dict[str, dict[str, Any]]:
    """Each candidate's probe as ``auto`` stored it: what it read before download, by its own count."""
    from sqlalchemy import select

    from db import Probe, open_store

    store = open_store(f"sqlite:///{db}")
    with store.session() as s:
        rows = {p.repo_id: {"kind": p.kind, "bytes_read": p.bytes_read, "full_bytes": p.full_bytes, "calls": p.calls}
                for p in s.scalars(select(Probe))}
    store.close()
    return rows


def run_mode(zoo: Zoo, mode: str, out: Path, made: list[tuple[str, str, str]], args: argparse.Namespace,
             experts: dict[str, float], max_probe: int | None) -> dict[str, Any]:
    from zoo.hub_server import HubServer

    targets = zoo.targets[:N_TARGETS]
    served, added = build_hub(zoo, out / f"hub-{mode}", targets, blind=mode == "blind")
    serve_distractors(served, out / "distractors", made)
    db = out / f"{mode}.sqlite"
    db.unlink(missing_ok=True)
    merged = out / f"merged-{mode}"
    with HubServer(served.hub, gated=added["gated"]) as hub:
        seconds = run_auto(zoo, served, hub.endpoint, merged, db, args.pool_size, max_probe)
        run = json.loads((merged / "auto_run.json").read_text())
        pool = [s["repo_id"] for s in run["sources"]]
        reads = served.reads(hub.served, set(pool), list(hub.requests))
        fw = [fw_timing(merged)]
        if mode == "labelled":  # FW cost against pool size: the same Hub and store, other pool sizes
            for k in (k for k in args.pool_sizes if k != args.pool_size):
                run_auto(zoo, served, hub.endpoint, out / f"merged-{mode}-k{k}", db, k, max_probe)
                fw.append(fw_timing(out / f"merged-{mode}-k{k}"))
    acc = evaluate(merged, targets, n=args.n)
    truth = served.truth
    return {
        "pool": [{"repo_id": r, **truth.get(r, {})} for r in pool],
        "coverage": {t: any(truth.get(r, {}).get("model") in (f"fft-{t}", f"lora-{t}") for r in pool)
                     for t in targets},
        "accuracy": acc, "normalized_mean": normalized_mean(acc, experts),
        "probes": run["probes"], "reads": {k: v for k, v in reads.items() if k != "per_candidate"},
        "auto_seconds": seconds, "fw": fw,
        "candidates": len(truth) - 1, "truth": truth, "per_candidate": reads["per_candidate"],
        "per_probe": probe_rows(db),
    }


def verdict(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    blind, labelled = res["blind"], res["labelled"]
    measured = {
        "coverage": sum(blind["coverage"].values()) / len(blind["coverage"]),
        "blind_over_labelled": blind["normalized_mean"] / max(labelled["normalized_mean"], 1e-9),
        "bytes_share_max": blind["probes"]["share_max"], "calls_max": blind["probes"]["calls_max"],
        "probe_s": blind["probes"]["seconds"],
    }
    higher = {"coverage", "blind_over_labelled"}
    return {k: {"measured": v, "target": TARGETS[k], "met": v >= TARGETS[k] if k in higher else v <= TARGETS[k]}
            for k, v in measured.items()}


def print_table(data: dict[str, Any]) -> None:
    res = data["modes"]
    print(f"\n{'':<34}" + "".join(f"{m:>14}" for m in MODES))
    rows = [
        ("candidates served", lambda r: f"{r['candidates']}"),
        ("targets covered", lambda r: f"{sum(r['coverage'].values())}/{len(r['coverage'])}"),
        ("normalized accuracy", lambda r: f"{r['normalized_mean']:.3f}"),
        ("candidates probed (adapters)", lambda r: f"{r['probes']['probed']} ({r['probes']['adapters']})"),
        ("bytes read/model median", lambda r: f"{r['probes']['share_median']:.3%}"),
        ("bytes read/model max", lambda r: f"{r['probes']['share_max']:.3%}"),
        ("resolver calls/candidate median", lambda r: f"{r['probes']['calls_median']:g}"),
        ("resolver calls/candidate max", lambda r: f"{r['probes']['calls_max']}"),
        ("probe wall (s)", lambda r: f"{r['probes']['seconds']:.1f}"),
        ("server: ranged bytes max (+adapters)", lambda r: f"{r['reads']['share_max']:.3%}"),
        ("server: resolver calls max", lambda r: f"{r['reads']['calls_max']}"),
        ("server: API calls/cand. median", lambda r: f"{r['reads']['api_calls_median']:g}"),
        ("server: API calls/cand. max", lambda r: f"{r['reads']['api_calls_max']}"),
        ("auto wall (s)", lambda r: f"{r['auto_seconds']:.1f}"),
        ("FW s/iteration (pool 8)", lambda r: f"{r['fw'][0]['s_per_iter'] or float('nan'):.2f}"),
    ]
    for label, cell in rows:
        print(f"{label:<34}" + "".join(f"{cell(res[m]):>14}" for m in MODES))
    print("\nFW s/iteration against pool size: " + ", ".join(
        f"{f['pool']}: {f['s_per_iter']:.2f}" for m in MODES for f in res[m]["fw"] if f["s_per_iter"] is not None))
    print("\ntargets (blind run):")
    for k, v in data["verdict"].items():
        print(f"  {k:<22} {v['measured']:>10.3f}  target {v['target']:<6} {'met' if v['met'] else 'NOT met'}")


def write_plot(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = data["modes"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    targets = list(res["blind"]["coverage"])
    for i, m in enumerate(MODES):
        ax[0][0].bar([j + 0.4 * i for j in range(len(targets))], [float(res[m]["coverage"][t]) for t in targets],
                     0.4, label=m)
    ax[0][0].set_xticks([j + 0.2 for j in range(len(targets))], targets)
    ax[0][0].set(title="target expert (full or LoRA) in the FW pool", ylabel="covered (1) / missing (0)", ylim=(0, 1.2))
    ax[0][0].legend()
    ax[0][1].bar(MODES, [res[m]["normalized_mean"] for m in MODES], color=["tab:blue", "tab:orange"])
    ax[0][1].axhline(0.95 * res["labelled"]["normalized_mean"], ls="--", c="k", label="0.95 x labelled")
    ax[0][1].set(title="fw_soft merge: normalized accuracy", ylabel="merged / expert exact match")
    ax[0][1].legend()
    # the probes' own count: the server's also holds the crawl's header reads and adapters' whole files
    per = res["blind"]["per_probe"]
    for kind, label in (("model", "full model: probed subset + header"), ("adapter", "adapter: read whole")):
        share = sorted(100 * p["bytes_read"] / p["full_bytes"] for p in per.values()
                       if p["kind"] == kind and p["full_bytes"])
        ax[1][0].plot(range(len(share)), share, ".", label=f"{label} ({len(share)})")
    ax[1][0].axhline(5, ls="--", c="k", label="5% target (full models)")
    ax[1][0].set(title="blind: bytes read before download, per probed candidate", xlabel="candidate (sorted)",
                 ylabel="% of the candidate's weight bytes", yscale="log")
    ax[1][0].legend()
    fw = sorted((f["pool"], f["s_per_iter"]) for m in MODES for f in res[m]["fw"] if f["s_per_iter"] is not None)
    ax[1][1].plot([p for p, _ in fw], [s for _, s in fw], "o-")
    ax[1][1].set(title="FW cost against pool size", xlabel="pool size (models)", ylabel="seconds per FW iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="the quick zoo (2 targets; numbers mean little)")
    ap.add_argument("--zoo", type=Path, default=None, help="zoo folder (built there if missing)")
    ap.add_argument("--candidates", type=int, default=100, help="candidates on the Hub, distractors included")
    ap.add_argument("--noise", type=float, default=0.1, help="perturbation, in units of the task vector's RMS")
    ap.add_argument("--pool-size", type=int, default=8)
    ap.add_argument("--pool-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16],
                    help="pool sizes for the FW cost curve (labelled Hub)")
    ap.add_argument("--n", type=int, default=None, help="test examples per task (default: the zoo's eval_n)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    zoo = build_zoo(args.zoo, quick=args.quick, threads=args.threads)
    args.n = args.n or zoo.manifest["spec"].get("eval_n", 200)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    targets = zoo.targets[:N_TARGETS]
    own = len(zoo.manifest["models"]) - 1 + 3  # the zoo's models but the base, the demo's three distractors
    made = make_distractors(zoo, out / "distractors", max(0, args.candidates - own), args.noise)
    experts = {t: evaluate(zoo.expert(t), [t], n=args.n, tokenizer_dir=zoo.base)[t] for t in targets}
    max_probe = args.candidates if auto_lists_max_probe() else None
    data: dict[str, Any] = {"targets": targets, "experts": experts, "max_probe": max_probe, "modes": {}}
    for mode in MODES:
        reset(out / f"hub-{mode}")
        data["modes"][mode] = run_mode(zoo, mode, out, made, args, experts, max_probe)
    data["verdict"] = verdict(data["modes"])
    data["meta"] = {"zoo": str(zoo.root), "quick": args.quick, "n": args.n, "threads": args.threads,
                    "noise": args.noise, "pool_size": args.pool_size, "cpu_count": os.cpu_count()}
    (out / "blind_pool.json").write_text(json.dumps(data, indent=1))
    write_plot(out / "blind_pool.png", data)
    print_table(data)
    return data


if __name__ == "__main__":
    main()
