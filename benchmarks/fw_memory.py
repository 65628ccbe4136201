"""Peak memory and speed of fw_hard against the pool size, streamed vs load-everything.

Builds a base Llama (hidden 512, 6 layers, vocab 8192: 27.4M parameters, fp32, with the task zoo's
char-level tokenizer) and up to 32 candidates (the base plus Gaussian noise), then runs the same
fw_hard recipe with pools of N = 4, 8, 16, 32 candidates, each as a fresh
`mergekit-from yaml` process, twice per N:

- ``streamed``: this project's pre-pass (candidates read tensor by tensor from safetensors);
- ``preloaded``: ``preload_candidates: true``, the official code's behaviour (every candidate in RAM).

Peak RSS is measured from outside the process: the kernel's ``ru_maxrss`` of the waited child
(``os.wait4``). Seconds per FW iteration (median over iterations, wall and process CPU; CPU time is the steadier one when
other jobs share the cores) come from the run's ``fw_trace.json``. Writes
DIR/fw_memory.json (``peak_rss_mb`` per N and ``ratio_32_over_4``, for both variants; target
for ``streamed``: ratio <= 1.15) and DIR/fw_memory.png.

    python benchmarks/fw_memory.py --out out/fw_memory [--sizes 4 8 16 32] [--iters 3] [--quick]

``--soft``: fw_soft and adamerging instead, on a SmolLM2-135M-shaped Llama (30 layers, hidden 576,
intermediate 1536, 9 heads, 3 KV heads, vocab 49152, tied embeddings; random init, so nothing is
downloaded) with experts = base + 1e-3 Gaussian task vectors. For K = 2 and 4 (fw_soft: K targets,
so K picks; adamerging: a pool of K) it writes DIR/soft_memory.json: peak RSS over the model's bytes
(target: <= K + 2), for the pre-pass and for the whole merge (mergekit's writing stage included),
also net of the same on a 2-layer toy model (the interpreter, torch, transformers), and the same for
RssAnon alone (RSS less the pages of memory-mapped weights, which are clean page cache).
``--code DIR [DIR ...]`` runs each recipe with each checkout's code in turn (e.g. a "before" and this
one), so the figures are side by side.
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

REPO = Path(__file__).resolve().parent.parent
# A merge in one process that prints its peak RSS (MB) when the pre-pass ends and at the end, and
# the peaks of its two parts (sampled every 5 ms from /proc/self/status): RssAnon, the process's own
# memory, and RssFile, pages of memory-mapped files (clean page cache, shared and reclaimable).
PHASES = """
import resource, sys, threading, time
from pathlib import Path
import mergekit.merge as mm
from mergekit.options import MergeOptions
from mergekit_from.recipe import check_recipe_file, merge_into
peak, seen, run_merge = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, {}, mm.run_merge
parts = {"RssAnon": 0.0, "RssFile": 0.0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in parts:
                parts[key] = max(parts[key], int(line.split()[1]) / 1024)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
def after_prepass(*args, **kwargs):
    seen["prepass"] = peak()
    seen["parts"] = dict(parts)
    return run_merge(*args, **kwargs)
mm.run_merge = after_prepass
Path(sys.argv[2]).mkdir(parents=True)
merge_into(check_recipe_file(Path(sys.argv[1]), MergeOptions(quiet=True)), Path(sys.argv[2]))
print("PEAKS", seen["prepass"], peak(), seen["parts"]["RssAnon"], seen["parts"]["RssFile"], parts["RssAnon"],
      parts["RssFile"])
"""


def build_pool(root: Path, n: int, quick: bool) -> tuple[Path, list[Path], int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_from.taskzoo.tokenizer import CharVocab

    base_dir = root / "base"
    shape = dict(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=6)
    if quick:
        shape = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    cfg = LlamaConfig(**shape, num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    marker = root / f"done-{n}"
    if not marker.exists():
        torch.manual_seed(0)
        base = LlamaForCausalLM(cfg)
        base.save_pretrained(base_dir)
        CharVocab().save(base_dir)
        for i in range(n):
            torch.manual_seed(100 + i)
            with torch.no_grad():
                for p in base.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            base.save_pretrained(root / f"cand{i}")  # a random walk: distinct, same layout
            print(f"candidate {i + 1}/{n}", flush=True)
        marker.write_text("ok")
    params = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    return base_dir, [root / f"cand{i}" for i in range(n)], params


SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
TOY_SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=8, tie_word_embeddings=True)


def build_experts(root: Path, shape: dict, k: int) -> tuple[Path, list[Path], int]:
    """A random-init base with ``shape`` and ``k`` experts (base + 1e-3 Gaussian task vectors); model bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_from.taskzoo.tokenizer import CharVocab

    base_dir, experts = root / "base", [root / f"expert{i}" for i in range(k)]
    if not (root / f"done-{k}").exists():
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0))
        base.save_pretrained(base_dir)
        CharVocab().save(base_dir)
        state = {n: p.detach().clone() for n, p in base.named_parameters()}
        for i, path in enumerate(experts):
            torch.manual_seed(100 + i)
            with torch.no_grad():
                for n, p in base.named_parameters():
                    p.copy_(state[n] + 1e-3 * torch.randn_like(p))
            base.save_pretrained(path)
            print(f"expert {i + 1}/{k}", flush=True)
        (root / f"done-{k}").write_text("ok")
    return base_dir, experts, (base_dir / "model.safetensors").stat().st_size


def build_all(out: Path, models: Path, samples: int) -> tuple[dict[str, Path], tuple, tuple]:
    """The calibration files, the toy pool and the SmolLM2-shaped pool (run in a spawned process)."""
    from mergekit_from.taskzoo.tasks import examples, write_jsonl

    files = {t: out / f"{t}.jsonl" for t in ("reverse", "shift", "maxchar", "rotate")}
    for t, f in files.items():
        write_jsonl(f, examples(t, "calibration", samples, seed=3))
    return files, build_experts(out / "toy", TOY_SHAPE, 4), build_experts(models, SMOLLM2_SHAPE, 4)


def soft_memory(args) -> dict:
    """Peak RSS of fw_soft (K picks) and adamerging (K experts) over the model's bytes, K = 2, 4,
    for each checkout in ``args.code`` side by side (the same recipes, one after the other).

    A forked child's peak RSS counts the parent's pages at the fork, so this parent stays free of
    torch: the models are built in a spawned process.
    """
    import multiprocessing

    import yaml

    models = (args.models_dir or args.out / "smollm2").resolve()
    with multiprocessing.get_context("spawn").Pool(1) as builder:
        data, toy, real = builder.apply(build_all, (args.out, models, args.samples))
    tasks = list(data)
    small = {"samples_per_task": args.samples, "ada_iters": args.iters, "ada_batch_size": 4, "batch_size": 4}
    report: dict = {"model_bytes": real[2], "settings": small, "codes": {}}
    runs = [("toy", toy, 2, "fw_soft")] + [("smollm2", real, k, m) for k in args.ks for m in ("fw_soft", "adamerging")]
    for label, (base, experts, _), k, method in runs:
        fw = {"max_iters": 1, "init": "base"} if method == "fw_soft" else {}
        recipe = {"merge_method": method, "base_model": str(base), "dtype": "float32",
                  "models": [{"model": str(e)} for e in experts[:k]],
                  method: {"targets": {t: str(data[t]) for t in tasks[:k]}, **small, **fw}}
        path = args.out / f"{label}_{method}_{k}.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        for i, code in enumerate(args.code):
            if method == "adamerging" and not (code / "mergekit_from" / "prepass" / "adamerging.py").exists():
                continue  # a checkout from before adamerging
            row = _measure(path, args.out / f"merged{i}_{label}_{method}_{k}", code, args.threads)
            report["codes"].setdefault(str(code), {})[f"{label}/{method}/K={k}"] = row
            print(f"{label:8s} {method:10s} K={k} {code}: {json.dumps(row)}", flush=True)
    for runs_of_code in report["codes"].values():
        _ratios(runs_of_code, real[2] / 2**20)
    return report


def _measure(recipe: Path, out: Path, code: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    # run in the checkout: ``python -c`` puts the working folder ahead of PYTHONPATH
    proc = subprocess.run([sys.executable, "-c", PHASES, str(recipe), str(out)], env=env, cwd=code,
                          capture_output=True, text=True)
    peaks = [line for line in proc.stdout.splitlines() if line.startswith("PEAKS")]
    if proc.returncode != 0 or not peaks:
        raise RuntimeError(f"{recipe} with {code} failed:\n{proc.stderr[-2000:]}")
    values = [round(float(v), 1) for v in peaks[0].split()[1:]]
    keys = ("prepass_peak_rss_mb", "peak_rss_mb", "prepass_peak_anon_mb", "prepass_peak_file_mb", "peak_anon_mb",
            "peak_file_mb")
    return {**dict(zip(keys, values)), "wall_s": round(time.perf_counter() - start, 1)}


def _ratios(runs: dict[str, dict], mb: float) -> None:
    """Each SmolLM2 row's peaks over the model's MB, raw and net of the toy run's."""
    toy_row = runs["toy/fw_soft/K=2"]
    for key, row in runs.items():
        if key.startswith("smollm2"):
            for phase in ("prepass_peak_rss_mb", "peak_rss_mb", "prepass_peak_anon_mb", "peak_anon_mb"):
                name = phase.removesuffix("_mb")
                row[f"{name}_ratio"] = round(row[phase] / mb, 2)
                row[f"{name}_ratio_net_of_toy"] = round((row[phase] - toy_row[phase]) / mb, 2)


def run_once(recipe: Path, out: Path, threads: int) -> tuple[float, float]:
    """(peak RSS in MB of the child, wall seconds); raises if the merge failed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "mergekit_from.cli", "yaml", str(recipe), str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="tiny models (CI smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the child (1 keeps timings steady when other jobs share the cores)")
    ap.add_argument("--models-dir", type=Path, help="where the pool is built/reused (default OUT/models)")
    ap.add_argument("--soft", action="store_true", help="fw_soft and adamerging on a SmolLM2-135M-shaped model")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4], help="numbers of picks / experts (--soft)")
    ap.add_argument("--code", type=Path, nargs="+", default=[REPO],
                    help="the checkouts whose code runs the merges, side by side (--soft)")
    args = ap.parse_args()
    args.out = args.out.resolve()  # recipes resolve data paths against their own folder
    args.code = [c.resolve() for c in args.code]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.soft:
        report = soft_memory(args)
        (args.out / "soft_memory.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return
    import yaml

    from mergekit_from.taskzoo.tasks import examples, write_jsonl

    models = (args.models_dir or args.out / "models").resolve()
    models.mkdir(parents=True, exist_ok=True)
    base, cands, params = build_pool(models, max(args.sizes), args.quick)
    data = args.out / "reverse.jsonl"
    write_jsonl(data, examples("reverse", "calibration", args.samples, seed=3))

    results: dict[str, dict[str, dict]] = {"streamed": {}, "preloaded": {}}
    for n in args.sizes:
        for variant in results:
            recipe = {
                "merge_method": "fw_hard",
                "base_model": str(base),
                "models": [{"model": str(c)} for c in cands[:n]],
                "dtype": "float32",
                "fw_hard": {"targets": {"reverse": str(data)}, "max_iters": args.iters, "samples_per_task": args.samples,
                            "preload_candidates": variant == "preloaded"},
            }
            path = args.out / f"fw_{variant}_{n}.yml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            out = args.out / f"merged_{variant}_{n}"
            rss, wall = run_once(path, out, args.threads)
            trace = json.loads((out / "fw_trace.json").read_text())
            its = trace["iterations"]  # median: the first iteration also pays torch's warm-up
            per_iter = statistics.median(it["seconds"] for it in its)
            cpu_iter = statistics.median(it["cpu_seconds"] for it in its)
            results[variant][str(n)] = {"peak_rss_mb": rss, "wall_s": wall, "seconds_per_iteration": per_iter,
                                        "cpu_seconds_per_iteration": cpu_iter}
            print(f"{variant:9s} N={n:2d}: peak RSS {rss:7.1f} MB, {per_iter:.2f} s/iteration "
                  f"({cpu_iter:.2f} CPU s), wall {wall:.1f} s", flush=True)

    def summary(rows: dict[str, dict]) -> dict:
        rss = {k: round(v["peak_rss_mb"], 1) for k, v in rows.items()}
        lo, hi = str(min(args.sizes)), str(max(args.sizes))
        return {
            "peak_rss_mb": rss,
            f"ratio_{hi}_over_{lo}": round(rss[hi] / rss[lo], 3),
            "seconds_per_iteration": {k: round(v["seconds_per_iteration"], 3) for k, v in rows.items()},
            "cpu_seconds_per_iteration": {k: round(v["cpu_seconds_per_iteration"], 3) for k, v in rows.items()},
            "wall_s": {k: round(v["wall_s"], 1) for k, v in rows.items()},
        }

    report = {
        **summary(results["streamed"]),
        "load_everything_reference": summary(results["preloaded"]),
        "setup": {"params_per_model": params, "dtype": "float32", "max_iters": args.iters,
                  "samples_per_task": args.samples, "sizes": args.sizes, "quick": args.quick, "torch_threads": args.threads,
                  "rss_measured_by": "os.wait4 ru_maxrss of the mergekit-from yaml child process"},
    }
    (args.out / "fw_memory.json").write_text(json.dumps(report, indent=1))
    plot(results, args.out / "fw_memory.png")
    print(json.dumps(report, indent=1))


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for variant, rows in results.items():
        ns = [int(k) for k in rows]
        ax1.plot(ns, [r["peak_rss_mb"] for r in rows.values()], marker="o", label=variant)
        ax2.plot(ns, [r["seconds_per_iteration"] for r in rows.values()], marker="o", label=f"{variant} (wall)")
        ax2.plot(ns, [r["cpu_seconds_per_iteration"] for r in rows.values()], marker="x", ls=":",
                 label=f"{variant} (CPU)")
    ax1.set(xlabel="candidates in the pool", ylabel="peak RSS (MB)", title="fw_hard peak memory")
    ax2.set(xlabel="candidates in the pool", ylabel="seconds / FW iteration", title="fw_hard speed")
    ax1.legend()
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
