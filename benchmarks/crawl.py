"""Crawl benchmark: the zoo crawler vs a bare ``list_models`` iteration, then kill -9 and resume.

    python benchmarks/crawl.py --out out/bench-crawl [--models 10000] [--page-size 1000] [--repeats 9]

Builds a local Hub folder of N metadata-only model folders (README card with ``base_model:`` and
tags, config.json), serves it with ``mergekit-from zoo serve`` in its own process, and times, in
this one process, interleaved:

- bare: ``list(HfApi.list_models(filter="base_model:<base>", expand=<the crawler's fields>))``;
- crawl: ``Crawler.crawl_tree(base, enrich=False)`` into a fresh SQLite store (same listing,
  plus the rows, edges and the saved next-page URL committed after every page).

Each timed run starts after a full garbage collection, so no run pays for another's garbage, and
counts the full collections it ran itself. The interleaved pass is done twice: with the heap as
the imports left it (torch and mergekit among them, as in ``mergekit-from zoo crawl``), then with
that heap frozen (``gc.freeze``), where a full collection no longer walks it: the second ratio
shows what the two sides cost without the garbage collector's share.

Then a ``mergekit-from zoo crawl`` process is killed with SIGKILL at about half the listing and
run again; rows stored, rows expected, lost and duplicate rows are counted. Everything goes to
DIR/crawl.json (and DIR/crawl.png). Targets: ratio <= 1.5, 0 lost, 0 duplicates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = "bench/base"
TASKS = ["math", "code", "chat", "translation", "summarization", "poetry", "medical", "legal", "finance", "science"]


def build_folder(root: Path, n: int) -> None:
    """N fine-tune folders (plus the base); reused when already complete."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(n):
        return
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000})
    (root / BASE).mkdir(parents=True, exist_ok=True)
    (root / BASE / "config.json").write_text(config)
    (root / BASE / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        d = root / f"org{i % 100:02d}" / f"ft-{task}-{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(config)
        (d / "README.md").write_text(
            f"---\nlicense: apache-2.0\nbase_model: {BASE}\ntags:\n- {task}\ndatasets:\n- {task}-set\n---\n"
            f"# {d.name}\n\nA {task} fine-tune.\n")
    marker.write_text(str(n))


def serve(folder: Path, page_size: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mergekit_from.cli", "zoo", "serve", str(folder), "--port", "0",
                             "--page-size", str(page_size)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if " at " not in line:
        proc.kill()
        raise SystemExit(f"zoo serve did not start: {line}")
    return proc, line.split(" at ")[1].split()[0]


def timed(fn: Callable[[], int]) -> tuple[float, int, int]:
    """Seconds ``fn`` took, the full collections it ran, and its result."""
    gc.collect()
    full = 0

    def count(phase: str, info: dict) -> None:
        nonlocal full
        full += phase == "stop" and info["generation"] == 2

    gc.callbacks.append(count)
    try:
        t0 = time.perf_counter()
        n = fn()
        return time.perf_counter() - t0, full, n
    finally:
        gc.callbacks.remove(count)


def time_bare(endpoint: str) -> tuple[float, int, int]:
    from huggingface_hub import HfApi

    from zoo.crawler import LIST_EXPAND

    api = HfApi(endpoint=endpoint, token=False)
    return timed(lambda: sum(1 for _ in api.list_models(filter=f"base_model:{BASE}", expand=LIST_EXPAND)))


def time_crawl(endpoint: str, path: Path) -> tuple[float, int, int]:
    from db import open_store
    from zoo.crawler import Crawler

    store = open_store(f"sqlite:///{path}")
    crawler = Crawler(store, endpoint, token=False, progress=False)
    try:
        return timed(lambda: crawler.crawl_tree(BASE, enrich=False).listed)
    finally:
        store.close()


def interleaved(endpoint: str, tmp: Path, repeats: int, label: str) -> dict:
    """Bare and crawl runs alternated (ABBA: who goes first swaps every repeat), so drift on a
    shared machine hits both alike."""
    runs: dict[str, list] = {"bare_s": [], "crawl_s": [], "full_gc_bare": [], "full_gc_crawl": []}
    for run in range(repeats):
        sides = {"bare": lambda: time_bare(endpoint),
                 "crawl": lambda: time_crawl(endpoint, tmp / f"timed-{label.replace(' ', '-')}-{run}.sqlite")}
        listed = {}
        for side in (("bare", "crawl") if run % 2 == 0 else ("crawl", "bare")):
            s, full, listed[side] = sides[side]()
            runs[f"{side}_s"].append(round(s, 3))
            runs[f"full_gc_{side}"].append(full)
        print(f"{label} run {run}: bare {runs['bare_s'][-1]:.2f}s ({listed['bare']} models), "
              f"crawl {runs['crawl_s'][-1]:.2f}s ({listed['crawl']})", flush=True)
    bare, crawl = statistics.median(runs["bare_s"]), statistics.median(runs["crawl_s"])
    return {**runs, "bare_s_median": round(bare, 3), "crawl_s_median": round(crawl, 3),
            "ratio": round(crawl / bare, 3),
            # Best-of-N is less sensitive to other processes on a shared machine.
            "ratio_best": round(min(runs["crawl_s"]) / min(runs["bare_s"]), 3)}


def kill_and_resume(endpoint: str, tmp: Path, expected: set[str]) -> dict:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp / 'killed.sqlite'}"
    cmd = [sys.executable, "-m", "mergekit_from.cli", "zoo", "crawl", "--base", BASE, "--endpoint", endpoint,
           "--db", url, "--no-enrich", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = create_engine(url)
    half = len(expected) // 2
    at_kill = 0
    while proc.poll() is None:
        try:
            with engine.connect() as c:
                at_kill = c.execute(text("select coalesce(max(items_done), 0) from crawl_state")).scalar()
        except Exception:  # noqa: BLE001 - the schema is not there yet
            at_kill = 0
        if at_kill >= half:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    with engine.connect() as c:
        stored_at_kill = c.execute(text("select count(*) from models where repo_id != :b"), {"b": BASE}).scalar()
        pages_at_kill = c.execute(text("select pages_done from crawl_state")).scalar()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    resume_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"resume failed: {done.stderr}")
    with engine.connect() as c:
        ids = [r[0] for r in c.execute(text("select repo_id from models where repo_id != :b"), {"b": BASE})]
        edges = c.execute(text("select count(*), count(distinct child_id) from edges")).one()
        state = c.execute(text("select pages_done, items_done, finished from crawl_state")).one()
        integrity = c.execute(text("pragma integrity_check")).scalar()
    engine.dispose()
    return {
        "killed_with": "SIGKILL", "killed_by_signal": proc.returncode == -signal.SIGKILL,
        "items_done_at_kill": at_kill, "rows_stored_at_kill": stored_at_kill, "pages_done_at_kill": pages_at_kill,
        "resume_wall_s": round(resume_s, 2), "pages_done_after_resume": state[0],
        "rows_stored": len(ids), "rows_expected": len(expected), "lost": len(expected - set(ids)),
        "duplicates": len(ids) - len(set(ids)), "edge_duplicates": edges[0] - edges[1],
        "unexpected": len(set(ids) - expected), "finished": bool(state[2]), "integrity_check": integrity,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    names = ["bare list_models", "zoo crawl"]
    ax.bar(names, [result["bare_s_median"], result["crawl_s_median"]], color=["#888", "#3a7"])
    for i, runs in enumerate([result["bare_s"], result["crawl_s"]]):
        ax.scatter([i] * len(runs), runs, color="k", s=10, zorder=3)
    ax.set_ylabel("seconds")
    ax.set_title(f"{result['models']} models, page {result['page_size']}: ratio {result['ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["HF_TOKEN"] = ""
    folder = args.out / f"hub-{args.models}"  # one folder per size: a smaller N must not list leftovers
    t0 = time.perf_counter()
    build_folder(folder, args.models)
    print(f"folder of {args.models} models ready in {time.perf_counter() - t0:.1f}s", flush=True)
    server, endpoint = serve(folder, args.page_size)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            time_bare(endpoint)  # warm-up: server-side caches, client imports
            load_before = os.getloadavg()
            as_imported = interleaved(endpoint, Path(tmp), args.repeats, "heap as imported")
            gc.freeze()
            try:
                frozen = interleaved(endpoint, Path(tmp), args.repeats, "heap frozen")
            finally:
                gc.unfreeze()
            expected = {f"org{i % 100:02d}/ft-{TASKS[i % len(TASKS)]}-{i:05d}" for i in range(args.models)}
            resume = kill_and_resume(endpoint, Path(tmp), expected)
    finally:
        server.terminate()
        server.wait(10)
    result = {
        "models": args.models, "page_size": args.page_size, "repeats": args.repeats,
        # Other processes on the machine share its cores: the 1/5/15-minute load around the timings.
        "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **as_imported, "ratio_target": 1.5,
        "heap_frozen": {k: frozen[k] for k in ("bare_s_median", "crawl_s_median", "ratio", "ratio_best",
                                               "full_gc_bare", "full_gc_crawl")},
        **resume,
    }
    (args.out / "crawl.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "crawl.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
