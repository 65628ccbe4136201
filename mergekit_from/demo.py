"""`mergekit-from demo`: the embedded default, fully offline.

Trains a tiny Llama base and three fine-tunes of it here (each on its own synthetic
next-token rule), merges the fine-tunes through the real `mergekit-from yaml` path with FroM
and with mergekit's `linear` and `task_arithmetic`, and prints every model's loss on every
rule. Everything it writes lands in ``--out``: models, recipes, merges and ``demo.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch
import yaml
from tqdm import tqdm

VOCAB, SEQ = 64, 24
# Three next-token rules on the same vocabulary: each fine-tune learns one.
RULES = {"shift1": lambda x: (x + 1) % VOCAB, "shift7": lambda x: (x + 7) % VOCAB, "double": lambda x: (2 * x) % VOCAB}


def _batch(rule, n: int, g: torch.Generator) -> torch.Tensor:
    seq = [torch.randint(0, VOCAB, (n,), generator=g)]
    for _ in range(SEQ - 1):
        seq.append(rule(seq[-1]))
    return torch.stack(seq, dim=1)


def _train(model, rules, steps: int, lr: float, seed: int, desc: str) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        x = torch.cat([_batch(r, 32 // len(rules), g) for r in rules])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def _losses(model_dir: Path) -> dict[str, float]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    g = torch.Generator().manual_seed(1234)
    return {name: float(model(input_ids=(x := _batch(rule, 64, g)), labels=x).loss) for name, rule in RULES.items()}


def build_models(root: Path) -> tuple[Path, dict[str, Path]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=4, num_hidden_layers=2, tie_word_embeddings=False)
    base = LlamaForCausalLM(cfg)
    # The base sees a mixture of all rules, as a pretrained model holds many skills.
    _train(base, list(RULES.values()), steps=40, lr=3e-3, seed=0, desc="pretraining base")
    base.save_pretrained(root / "base")
    experts = {}
    for i, (name, rule) in enumerate(RULES.items()):
        ft = LlamaForCausalLM.from_pretrained(root / "base")
        _train(ft, [rule], steps=60, lr=1e-3, seed=10 + i, desc=f"fine-tuning {name}")
        experts[name] = root / f"ft-{name}"
        ft.save_pretrained(experts[name])
    return root / "base", experts


def _recipe(method: str, base: Path, experts: dict[str, Path], params: dict) -> dict:
    per_model = {"weight": 1.0} if method in ("linear", "task_arithmetic") else {}
    return {
        "merge_method": method,
        **({} if method == "linear" else {"base_model": str(base)}),
        "models": [{"model": str(p), **({"parameters": per_model} if per_model else {})} for p in experts.values()],
        "parameters": params,
        "dtype": "float32",
    }


@click.command("demo")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
def demo_cmd(out: Path) -> None:
    """Build tiny models here, FroM-merge them via the YAML path, print a loss table."""
    from mergekit.options import MergeOptions

    from mergekit_from.recipe import run_recipe

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    base, experts = build_models(out / "models")
    merges = {
        "from (k=2)": _recipe("from", base, experts, {"k": 2.0}),
        "linear": _recipe("linear", base, experts, {}),
        "task_arithmetic (λ=0.3)": _recipe("task_arithmetic", base, experts, {"lambda": 0.3}),
    }
    options = MergeOptions(copy_tokenizer=False, quiet=True)
    rows = {"base": _losses(base)} | {f"expert {n}": _losses(p) for n, p in experts.items()}
    for label, recipe in tqdm(merges.items(), desc="merging"):
        slug = label.split(" ")[0]
        cfg = out / f"{slug}.yml"
        cfg.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
        run_recipe(cfg, out / f"merged-{slug}", options)
        rows[label] = _losses(out / f"merged-{slug}")

    names = list(RULES)
    click.echo(f"\nloss per rule (lower is better); merges written to {out}")
    click.echo(f"{'model':<26}" + "".join(f"{n:>10}" for n in names) + f"{'mean':>10}")
    for label, losses in rows.items():
        vals = [losses[n] for n in names]
        click.echo(f"{label:<26}" + "".join(f"{v:>10.3f}" for v in vals) + f"{sum(vals) / len(vals):>10.3f}")
    (out / "demo.json").write_text(json.dumps({"loss": rows, "wall_s": time.perf_counter() - start}, indent=2))
    click.echo(f"\ndone in {time.perf_counter() - start:.0f}s; table in {out / 'demo.json'}")
