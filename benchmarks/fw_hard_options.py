"""fw_hard's starting point and vertex set as the official code runs them, against our defaults,
on the quick task zoo pool (tests/fixtures/fw_experts.py: 4 experts, 2 targets).

Variants: init task_arithmetic | ties, initial_vertex false | true. Prints and writes
DIR/fw_hard_options.json: per variant the final objective (response cross-entropy on the targets'
calibration samples), the LMO's picks, and exact-match accuracy on each target's test split.

    python benchmarks/fw_hard_options.py --out out/fw_hard_options [--iters 10] [--step-size 0.1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--step-size", type=float, default=0.1)
    ap.add_argument("--test", type=int, default=100, help="test examples per target")
    args = ap.parse_args()
    import torch
    from click.testing import CliRunner

    from mergekit_from.cli import main as cli
    from mergekit_from.taskzoo.evaluate import evaluate
    from tests.fixtures.fw_experts import TASKS, fw_recipe

    torch.set_num_threads(1)
    targets = ["reverse", "shift"]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    for init in ("task_arithmetic", "ties"):
        for vertex in (False, True):
            name = f"init={init},initial_vertex={vertex}"
            recipe = fw_recipe("fw_hard", list(TASKS), targets, max_iters=args.iters, step_size=args.step_size,
                               init=init, initial_vertex=vertex)
            path = args.out / f"{init}-{vertex}.yml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            out = args.out / f"{init}-{vertex}"
            result = CliRunner().invoke(cli, ["yaml", str(path), str(out), "--quiet"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            trace = json.loads((out / "fw_trace.json").read_text())
            report[name] = {
                "start_objective": round(trace["iterations"][0]["objective"], 4),
                "final_objective": round(trace["final_objective"], 4),
                "picks": [Path(it["picked"]).name for it in trace["iterations"]],
                "accuracy": evaluate(out, targets, n=args.test),
            }
            print(name, json.dumps(report[name]), flush=True)
    (args.out / "fw_hard_options.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
