"""Why fw_hard stalls on the task zoo: the objective and the accuracy along one hard FW step.

θ₀ is task arithmetic over the targets' experts (λ = ``--lam``; 1.0 is the best λ on the zoo), and
the step is θ₀ + c·(s − θ₀) towards one whole expert s (``--towards``; ``sort`` is what the LMO
picks first from λ = 1 with 4 targets). For each c it prints the FW objective (mean response
cross-entropy on the calibration data, as the pre-pass computes it) and the exact-match accuracy
on the test split. A step size chosen by line search would pick the c with the lowest objective;
if accuracy falls there too, a better step size cannot fix fw_hard on this zoo.

Writes DIR/fw_step_probe.json and DIR/fw_step_probe.png.

    python benchmarks/fw_step_probe.py --out out/fw_step_probe [--zoo DIR] [--lam 1.0] [--towards sort]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def probe(zoo, targets: list[str], lam: float, towards: str, steps: list[float], n: int) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    from mergekit_from import calibration
    from mergekit_from.prepass.objective import TaskBatches
    from mergekit_from.prepass.settings import HardSettings
    from mergekit_from.taskzoo.evaluate import evaluate_loaded, load_model

    fw = {k: f.default for k, f in HardSettings.model_fields.items()}  # the objective exactly as fw_hard sees it

    base = load_file(zoo.base / "model.safetensors")
    experts = {t: load_file(zoo.expert(t) / "model.safetensors") for t in {*targets, towards}}
    theta0 = {k: base[k] + lam * sum(experts[t][k] - base[k] for t in targets) for k in base}
    model, tokenizer = load_model(zoo.base)
    files = {t: zoo.calibration(t) for t in targets}
    tasks = TaskBatches.of(calibration.load_tasks(files, fw["samples_per_task"]), tokenizer, fw["max_length"],
                           fw["batch_size"])
    rows = []
    for c in steps:
        model.load_state_dict({k: theta0[k] + c * (experts[towards][k] - theta0[k]) for k in base}, strict=False)
        with torch.no_grad():
            objective = tasks.objective(model, fw["objective"])
        acc = evaluate_loaded(model, tokenizer, targets, n=n)
        rows.append({"c": c, "objective": round(objective, 4), "accuracy": acc,
                     "mean": round(sum(acc.values()) / len(acc), 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], towards: str, lam: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [r["c"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(cs, [r["objective"] for r in rows], "o-", color="tab:red", label="objective (calibration CE)")
    ax1.set_xlabel(f"step c towards the {towards} expert (from task arithmetic λ={lam})")
    ax1.set_ylabel("objective", color="tab:red")
    ax2 = ax1.twinx()
    for task in rows[0]["accuracy"]:
        ax2.plot(cs, [r["accuracy"][task] for r in rows], ".--", alpha=0.6, label=task)
    ax2.plot(cs, [r["mean"] for r in rows], "s-", color="black", label="mean accuracy")
    ax2.set_ylabel("exact-match accuracy (test)")
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import torch

    from mergekit_from.taskzoo import build_zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--zoo", type=Path, default=None, help="task zoo folder (default: the cache; built if missing)")
    ap.add_argument("--quick", action="store_true", help="the quick zoo (for a smoke run; numbers mean little)")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--towards", default=None, help="the expert to step towards (default: the first target)")
    ap.add_argument("--targets", type=int, default=4, help="the zoo's first N target tasks")
    ap.add_argument("--steps", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--n", type=int, default=200, help="test examples per task")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = build_zoo(args.zoo, quick=args.quick)
    targets = zoo.targets[: args.targets]
    towards = args.towards or targets[0]
    rows = probe(zoo, targets, args.lam, towards, args.steps, args.n)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"zoo": str(zoo.root), "targets": targets, "lam": args.lam, "towards": towards, "rows": rows}
    (args.out / "fw_step_probe.json").write_text(json.dumps(result, indent=1))
    plot(rows, towards, args.lam, args.out / "fw_step_probe.png")


if __name__ == "__main__":
    main()
