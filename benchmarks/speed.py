"""FroM vs mergekit's task_arithmetic through `mergekit-from yaml`, side by side.

Builds a base and 8 fine-tunes of ~30M parameters (Llama, hidden 512, 6 layers, vocab 8192: 27.4M),
then runs the two recipes alternately, each in a fresh process, and records for every run the
command's wall time, the time spent inside the merge, and the process's peak RSS.
Writes DIR/speed.json with medians and the ratio ``from_over_task_arithmetic`` of merge wall
times (target <= 1.05), the same ratio on the merge's CPU time (robust when other processes
share the cores) and on whole-command wall time, and DIR/speed.png.

    python benchmarks/speed.py --out out/bench [--repeats 5] [--models 8]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Runs in the child: one merge via the CLI entry point, then report timing and peak RSS.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from mergekit.options import MergeOptions
from mergekit_from.recipe import run_recipe
t1, c1 = time.perf_counter(), time.process_time()
run_recipe(sys.argv[1], sys.argv[2], MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=True))
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": t1 - t0, "merge_s": t2 - t1, "merge_cpu_s": c2 - c1,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_models(root: Path, n: int) -> tuple[Path, list[Path]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    base_dir = root / "base"
    if not (root / "done").exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_attention_heads=8,
                          num_key_value_heads=8, num_hidden_layers=6, tie_word_embeddings=False)
        base = LlamaForCausalLM(cfg)
        base.save_pretrained(base_dir)
        print(f"base: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters", flush=True)
        for i in range(n):
            torch.manual_seed(100 + i)
            with torch.no_grad():
                ft = LlamaForCausalLM(cfg)
                ft.load_state_dict(base.state_dict())
                for p in ft.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3 * (1 + i))
            ft.save_pretrained(root / f"ft{i}")
        (root / "done").write_text("ok")
    return base_dir, [root / f"ft{i}" for i in range(n)]


def count_params(model_dir: Path) -> int:
    from mergekit_from.weights import TensorIndex

    index = TensorIndex.open(model_dir)
    return sum(math.prod(shape) for shape in index.shapes.values())


def recipe(method: str, base: Path, models: list[Path]) -> str:
    import yaml

    from mergekit_from.methods.from_merge import DEFAULT_K

    params = {"k": DEFAULT_K} if method == "from" else {"lambda": 1.0}
    per_model = {} if method == "from" else {"weight": 1.0 / len(models)}
    return yaml.safe_dump({
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), **({"parameters": per_model} if per_model else {})} for m in models],
        "parameters": params,
        "dtype": "float32",
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", type=int, default=8)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base, models = build_models(args.out / "models", args.models)
    methods = ["from", "task_arithmetic"]
    for m in methods:
        (args.out / f"{m}.yml").write_text(recipe(m, base, models))

    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        order = methods if rep % 2 == 0 else methods[::-1]  # alternate to cancel drift
        for m in order:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, str(args.out / f"{m}.yml"), str(args.out / f"merged_{m}")],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{m} failed:\n{proc.stderr}")
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall_s": wall}
            runs[m].append(row)
            print(f"rep {rep} {m:<16} wall {wall:6.2f}s merge {row['merge_s']:6.2f}s "
                  f"(cpu {row['merge_cpu_s']:6.2f}s) rss {row['peak_rss_mb']:7.0f} MB", flush=True)

    def med(m, key):
        return statistics.median(r[key] for r in runs[m])

    result = {
        "models": len(models),
        "params_per_model_m": round(count_params(base) / 1e6, 1),
        "repeats": args.repeats,
        "median": {m: {k: med(m, k) for k in ("wall_s", "merge_s", "merge_cpu_s", "peak_rss_mb")} for m in methods},
        "from_over_task_arithmetic": med("from", "merge_s") / med("task_arithmetic", "merge_s"),
        # CPU time of the merge phase: robust when other work shares the cores
        "from_over_task_arithmetic_cpu": med("from", "merge_cpu_s") / med("task_arithmetic", "merge_cpu_s"),
        "from_over_task_arithmetic_wall": med("from", "wall_s") / med("task_arithmetic", "wall_s"),
        "peak_rss_ratio": med("from", "peak_rss_mb") / med("task_arithmetic", "peak_rss_mb"),
        "runs": runs,
    }
    (args.out / "speed.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "speed.png")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "merge_s", "merge time (s)"), (axes[1], "peak_rss_mb", "peak RSS (MB)")):
        for i, (m, rows) in enumerate(result["runs"].items()):
            ax.scatter([i] * len(rows), [r[key] for r in rows], alpha=0.7)
            ax.hlines(result["median"][m][key], i - 0.2, i + 0.2, color="k")
        ax.set_xticks(range(len(result["runs"])), list(result["runs"]))
        ax.set_ylabel(label)
    fig.suptitle(f"{result['models']} x {result['params_per_model_m']}M-parameter models; "
                 f"from/task_arithmetic = {result['from_over_task_arithmetic']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
