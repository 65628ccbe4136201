"""Merge quality on the task zoo: every method through the real recipe path, then exact-match.

    PYTHONPATH=. python benchmarks/quality.py --out out/quality [--quick] [--zoo DIR] [--n 200]

Builds or reuses the zoo, writes one mergekit YAML recipe per (setting, method), runs it with
``mergekit_from.recipe.run_recipe`` (what ``mergekit-from yaml`` runs), evaluates the merge on the
setting's tasks and writes ``quality.json``, ``quality.md`` and ``quality.png`` into ``--out``.

quality.json: ``{"settings": {name: {"tasks", "base", "experts", "methods": {label: {"method",
"params", "acc", "normalized_mean"}}}}, "meta": {...}}``; normalized_mean is the mean over the
setting's tasks of merged accuracy / expert accuracy. Settings ``fft8``/``lora8`` merge all eight
target experts; ``fft2``, ``fft4``, ``lora2``, ``lora4`` merge the first 2 and 4 (the curve of
quality against the number of merged experts).

Extending: a new method is one more entry in ``METHODS`` (a ``Run``, or a ``Tuned`` grid whose best
value is labelled as tuned on test); a new setting is one more entry in ``settings()``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergekit_from.taskzoo import Zoo, build_zoo, evaluate  # noqa: E402

FROM_KS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
TA_LAMBDAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
FROM_LAMBDAS = (1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Run:
    """One merge: ``merge_method`` with top-level ``params`` and a ``weight`` of 1 per expert."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    with_base: bool = True  # False: no base_model (linear averages the experts themselves)

    def recipe(self, base: str, models: list[str]) -> dict[str, Any]:
        recipe: dict[str, Any] = {"merge_method": self.method}
        if self.with_base:
            recipe["base_model"] = base
        recipe["models"] = [{"model": m, "parameters": {"weight": 1.0}} for m in models]
        recipe["parameters"] = dict(self.params)
        recipe["dtype"] = "float32"
        return recipe


@dataclass(frozen=True)
class Tuned:
    """A grid over one parameter; reported as its best point, labelled as tuned on the test split."""

    label: str
    run: Run
    param: str
    values: tuple[float, ...]

    def points(self) -> list[Run]:
        return [Run(f"{self.run.label} {self.param}={v}", self.run.method, {**self.run.params, self.param: v},
                    self.run.with_base) for v in self.values]


METHODS: list[Run | Tuned] = [
    Run("linear", "linear", with_base=False),
    Run("task_arithmetic λ=0.3", "task_arithmetic", {"lambda": 0.3}),
    Tuned("task_arithmetic (λ tuned on test)", Run("task_arithmetic", "task_arithmetic"), "lambda", TA_LAMBDAS),
    Run("ties", "ties", {"density": 0.5}),
    Run("dare_ties", "dare_ties", {"density": 0.5}),
    *(Run(f"from k={k:g}", "from", {"k": k}) for k in FROM_KS),
    # FroM is a convex combination (like linear); its lambda scales the merged task vector the way
    # task arithmetic's does, so it gets the same tuned-on-test treatment at the default k.
    Tuned("from k=2 (λ tuned on test)", Run("from k=2", "from", {"k": 2.0}), "lambda", FROM_LAMBDAS),
]


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # "fft" or "lora"
    tasks: tuple[str, ...]

    def models(self, zoo: Zoo) -> list[str]:
        if self.kind == "lora":
            return [f"{zoo.base}+{zoo.expert(t, 'lora')}" for t in self.tasks]
        return [str(zoo.expert(t)) for t in self.tasks]


def settings(zoo: Zoo) -> list[Setting]:
    targets = tuple(zoo.targets)
    sizes = sorted({n for n in (2, 4, len(targets)) if n <= len(targets)})
    return [Setting(f"{kind}{n}", kind, targets[:n]) for kind in ("fft", "lora") for n in sizes]


def normalized_mean(acc: dict[str, float], experts: dict[str, float]) -> float:
    return sum(acc[t] / experts[t] for t in acc) / len(acc)


class Bench:
    def __init__(self, zoo: Zoo, out: Path, n: int):
        from mergekit.options import MergeOptions

        self.zoo, self.out, self.n = zoo, out, n
        self.work = out / "work"
        self.options = MergeOptions(random_seed=0, lora_merge_cache=str(zoo.root / "lora-merge-cache"),
                                    quiet=True, write_model_card=True)
        self.seconds: dict[str, float] = {"merge": 0.0, "eval": 0.0}
        self.done: dict[str, dict[str, float]] = {}  # recipe text -> accuracy (grids repeat plain runs)

    def eval(self, model_dir: Path, tasks: tuple[str, ...], **kw) -> dict[str, float]:
        t0 = time.perf_counter()
        acc = evaluate(model_dir, tasks, self.n, tokenizer_dir=self.zoo.base, **kw)
        self.seconds["eval"] += time.perf_counter() - t0
        return acc

    def merge_and_eval(self, setting: Setting, run: Run) -> dict[str, float]:
        from mergekit_from.recipe import run_recipe

        slug = "".join(c if c.isalnum() or c in ".=-" else "_" for c in run.label)
        text = yaml.safe_dump(run.recipe(str(self.zoo.base), setting.models(self.zoo)), sort_keys=False)
        if text in self.done:
            return self.done[text]
        recipe = self.work / "recipes" / setting.name / f"{slug}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(text)
        merged = self.work / "merged" / setting.name / slug
        t0 = time.perf_counter()
        run_recipe(recipe, merged, self.options)
        self.seconds["merge"] += time.perf_counter() - t0
        acc = self.eval(merged, setting.tasks)
        shutil.rmtree(merged)  # recipes stay; merges are cheap to redo and 5 MB each
        self.done[text] = acc
        return acc

    def setting(self, setting: Setting, base_acc: dict[str, float], bar) -> dict[str, Any]:
        if setting.kind == "lora":
            experts = {t: self.eval(self.zoo.expert(t, "lora"), (t,), base_dir=self.zoo.base)[t]
                       for t in setting.tasks}
        else:
            experts = {t: self.eval(self.zoo.expert(t), (t,))[t] for t in setting.tasks}
        result: dict[str, Any] = {"tasks": list(setting.tasks), "base": {t: base_acc[t] for t in setting.tasks},
                                  "experts": experts, "methods": {}}

        def record(run: Run, acc: dict[str, float], **extra: Any) -> dict[str, Any]:
            return {"method": run.method, "params": {**run.params, **extra}, "acc": acc,
                    "normalized_mean": round(normalized_mean(acc, experts), 4)}

        for entry in METHODS:
            if isinstance(entry, Run):
                result["methods"][entry.label] = record(entry, self.merge_and_eval(setting, entry))
                bar.update(1)
                continue
            grid = {}
            for point in entry.points():
                grid[point.params[entry.param]] = record(point, self.merge_and_eval(setting, point))
                bar.update(1)
            best = max(grid, key=lambda v: (grid[v]["normalized_mean"], -v))
            result["methods"][entry.label] = {
                **grid[best],
                "params": {**grid[best]["params"], "tuned_on": "test",
                           "grid": {str(v): g["normalized_mean"] for v, g in grid.items()}},
            }
        return result


def _count(entries: list[Run | Tuned]) -> int:
    return sum(len(e.values) if isinstance(e, Tuned) else 1 for e in entries)


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    sets = data["settings"]
    main = [s for s in sets if s.endswith("8")] or list(sets)
    labels = list(next(iter(sets.values()))["methods"])
    lines = ["# Merge quality on the task zoo", "",
             "Normalized mean = mean over tasks of merged exact-match / expert exact-match "
             f"({data['meta']['n']} test examples per task).", "",
             "| method | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for label in labels:
        cells = [f"{sets[s]['methods'][label]['normalized_mean']:.3f}" for s in sets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for s in main:
        st = sets[s]
        lines += ["", f"## {s}: per-task accuracy", "",
                  "| | " + " | ".join(st["tasks"]) + " |", "|---|" + "---:|" * len(st["tasks"]),
                  "| base | " + " | ".join(f"{st['base'][t]:.3f}" for t in st["tasks"]) + " |",
                  "| expert | " + " | ".join(f"{st['experts'][t]:.3f}" for t in st["tasks"]) + " |"]
        for label, m in st["methods"].items():
            lines.append(f"| {label} | " + " | ".join(f"{m['acc'][t]:.3f}" for t in st["tasks"]) + " |")
    meta = data["meta"]
    lines += ["", f"Zoo: `{meta['zoo']}`. Wall time {meta['seconds']['total']:.0f} s "
                  f"(merges {meta['seconds']['merge']:.0f} s, evaluation {meta['seconds']['eval']:.0f} s).", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = data["settings"]
    kinds = sorted({s.rstrip("0123456789") for s in sets})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False, sharey=True)
    labels = list(next(iter(sets.values()))["methods"])
    cmap = plt.get_cmap("tab20")
    for ax, kind in zip(axes[0], kinds):
        names = sorted((s for s in sets if s.rstrip("0123456789") == kind), key=lambda s: len(sets[s]["tasks"]))
        xs = [len(sets[s]["tasks"]) for s in names]
        for i, label in enumerate(labels):
            ys = [sets[s]["methods"][label]["normalized_mean"] for s in names]
            ax.plot(xs, ys, marker="o", color=cmap(i % 20), label=label,
                    linestyle="--" if "tuned" in label else "-")
        ax.set_title(f"{kind.upper()} experts")
        ax.set_xlabel("experts merged")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalized accuracy (merged / expert)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest difference, in points, between two results' accuracies and normalized means."""
    worst = 0.0
    for name, sa in a["settings"].items():
        sb = b["settings"].get(name)
        if sb is None:
            continue
        for label, ma in sa["methods"].items():
            mb = sb["methods"][label]
            diffs = [abs(ma["normalized_mean"] - mb["normalized_mean"])]
            diffs += [abs(ma["acc"][t] - mb["acc"][t]) for t in ma["acc"]]
            worst = max(worst, 100 * max(diffs))
    return worst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="the quick zoo (for tests; numbers mean little)")
    ap.add_argument("--zoo", type=Path, default=None, help="zoo folder (built there if missing)")
    ap.add_argument("--n", type=int, default=None, help="test examples per task (default 200, quick 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated setting names to run (default all)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="an earlier quality.json: print the largest difference (determinism check)")
    args = ap.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    zoo = build_zoo(args.zoo, quick=args.quick, threads=args.threads)
    n = args.n or (64 if args.quick else 200)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(zoo, args.out, n)
    chosen = settings(zoo)
    if args.only:
        keep = set(args.only.split(","))
        chosen = [s for s in chosen if s.name in keep]
    base_acc = bench.eval(zoo.base, tuple(zoo.targets))
    data: dict[str, Any] = {"settings": {}}
    with tqdm(total=_count(METHODS) * len(chosen), desc="quality", unit="merge") as bar:
        for setting in chosen:
            data["settings"][setting.name] = bench.setting(setting, base_acc, bar)
    shutil.rmtree(bench.work / "merged", ignore_errors=True)
    data["meta"] = {"zoo": str(zoo.root), "quick": args.quick, "n": n, "threads": args.threads,
                    "seconds": {**{k: round(v, 1) for k, v in bench.seconds.items()},
                                "total": round(time.perf_counter() - t0, 1)}}
    (args.out / "quality.json").write_text(json.dumps(data, indent=1))
    write_markdown(args.out / "quality.md", data)
    write_plot(args.out / "quality.png", data)
    print((args.out / "quality.md").read_text())
    if args.compare:
        data["meta"]["max_diff_points_vs_previous"] = compare(data, json.loads(args.compare.read_text()))
        print(f"largest difference to {args.compare}: {data['meta']['max_diff_points_vs_previous']:.2f} points")
        (args.out / "quality.json").write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
