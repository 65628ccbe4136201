"""Merge quality on the task zoo or the real zoo: every method through the real recipe path, then exact-match.

    PYTHONPATH=. python benchmarks/quality.py --out out/quality [--quick] [--zoo DIR] [--n 200]
    PYTHONPATH=. python benchmarks/quality.py --out out/quality-real --real [--zoo DIR] [--threads 2]

Builds or reuses the zoo, writes one mergekit YAML recipe per (setting, method), runs it with
``mergekit_from.recipe.run_recipe`` (what ``mergekit-from yaml`` runs), evaluates the merge on the
setting's tasks and writes ``quality.json``, ``quality.md`` and ``quality.png`` into ``--out``
(``quality.json`` is rewritten after each method, so an interrupted run keeps what it measured).

quality.json: ``{"settings": {name: {"tasks", "pool", "base", "experts", "methods": {label: {"method",
"params", "acc", "normalized_mean", "seconds", "peak_rss_mb", "start_rss_mb"}}}}, "meta": {...}}``; normalized_mean is
the mean over the setting's tasks of merged accuracy / expert accuracy; seconds and peak_rss_mb are the
merge's (pre-pass and mergekit's writing, not the evaluation; the peak is the kernel's VmHWM, reset
before each merge; start_rss_mb is what the process held then), and ``meta.model_mb`` is the base's
weight bytes. Settings ``fft8``/``lora8`` merge all eight target experts; ``fft2``, ``fft4``, ``lora2``,
``lora4`` merge the first 2 and 4 (the curve of quality against the number of merged experts). A setting's ``pool`` lists the experts merged when
they are not just its tasks:

- ``irrelevance<N>``: objective and evaluation on 4 target tasks, a pool of N experts: the 4 targets,
  then the zoo's other FFT experts (task zoo: N = 4, 8, 12, 20; real zoo: N = 4, 8, 16, the last 4
  the LoRA adapters of targets 5-8, so the pool mixes full fine-tunes and adapters);
- ``relevance<N>`` (task zoo): N = 4, 8, 12 experts, every one a target.

The data-informed methods (RegMean, AdaMerging (real zoo), FW-Merging hard and soft) run on the
largest fft/lora setting of the task zoo, on the 4-expert settings of the real zoo, and on the
scaling settings; they read the zoo's calibration JSONL, never the test split. FW and AdaMerging
take LoRA experts as ``BASE+ADAPTER`` (folded tensor by tensor); RegMean needs full weights, so it
merges the adapters folded into the base (peft ``merge_and_unload``, cached under
``~/.cache/mergekit-from/quality/``, never in the zoo's folder). ``meta.scaling`` holds each method's normalized mean at the largest pool over
the smallest (FW target: >= 0.97); ``scaling.png`` plots the scalings.

Extending: a new method is one more entry in ``METHODS``/``REAL_METHODS`` (a ``Run``, or a ``Tuned``
grid whose best value is labelled as tuned on test); a new setting is one more entry in
``settings()``/``real_settings()``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.paths import cache_root  # noqa: E402
from mergekit_from.errors import MergekitFromError, one_line  # noqa: E402
from mergekit_from.methods.from_merge import DEFAULT_K  # noqa: E402
from mergekit_from.realzoo.evaluate import evaluate  # noqa: E402 (either zoo's tasks)
from mergekit_from.taskzoo import Zoo, build_zoo  # noqa: E402
from mergekit_from.taskzoo.manifest import MANIFEST  # noqa: E402
from mergekit_from.weights import weight_files_state  # noqa: E402

FROM_KS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
TA_LAMBDAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
FROM_LAMBDAS = (1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Run:
    """One merge: ``merge_method`` with top-level ``params`` and a ``weight`` of 1 per expert
    (except for pre-pass methods)."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    with_base: bool = True  # False: no base_model (linear averages the experts themselves)
    # A pre-pass method's recipe section (its data files).
    section: dict[str, Any] = field(default_factory=dict)
    # True: RegMean, which reads no adapters: LoRA experts folded into full copies, each model with its own task's
    # calibration data (the section's ``calibration``, filled in when the run's models are known)
    full_weights: bool = False

    def recipe(self, base: str, models: list[str], calibration: list[str] = ()) -> dict[str, Any]:
        """``calibration``: with ``full_weights``, each model's calibration file, in ``models``' order."""
        recipe: dict[str, Any] = {"merge_method": self.method}
        if self.with_base:
            recipe["base_model"] = base
        section = {**self.section, **({"calibration": dict(zip(models, calibration))} if self.full_weights else {})}
        # a pre-pass method takes no per-model weight (and refuses one)
        weight = {} if section else {"parameters": {"weight": 1.0}}
        recipe["models"] = [{"model": m, **weight} for m in models]
        recipe["parameters"] = dict(self.params)
        if section:
            recipe[self.method] = section
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
        return [replace(self.run, label=f"{self.run.label} {self.param}={v}", params={**self.run.params, self.param: v})
                for v in self.values]


def data_free(ta_lambdas: tuple[float, ...], from_ks: tuple[float, ...], from_lambdas: tuple[float, ...]
              ) -> list[Run | Tuned]:
    """The data-free rows: averaging, task arithmetic (λ = 0.3 and a grid), TIES, DARE-TIES, FroM over k and λ."""
    return [
        Run("linear", "linear", with_base=False),
        Run("task_arithmetic λ=0.3", "task_arithmetic", {"lambda": 0.3}),
        Tuned("task_arithmetic (λ tuned on test)", Run("task_arithmetic", "task_arithmetic"), "lambda", ta_lambdas),
        Run("ties", "ties", {"density": 0.5}),
        Run("dare_ties", "dare_ties", {"density": 0.5}),
        *(Run(f"from k={k:g}", "from", {"k": k}) for k in from_ks),
        # FroM is a convex combination (like linear); its lambda scales the merged task vector the way
        # task arithmetic's does, so it gets the same tuned-on-test treatment at the default k.
        Tuned(f"from k={DEFAULT_K:g} (λ tuned on test)", Run(f"from k={DEFAULT_K:g}", "from", {"k": DEFAULT_K}),
              "lambda", from_lambdas),
    ]


METHODS: list[Run | Tuned] = data_free(TA_LAMBDAS, FROM_KS, FROM_LAMBDAS)


SCALING_METHODS: list[Run | Tuned] = [
    Run("task_arithmetic λ=0.3", "task_arithmetic", {"lambda": 0.3}),
    Tuned("task_arithmetic (λ tuned on test)", Run("task_arithmetic", "task_arithmetic"), "lambda", TA_LAMBDAS),
    Run("ties", "ties", {"density": 0.5}),
]


@dataclass(frozen=True)
class DataDefaults:
    """Settings of the data-informed methods (reported in every result's params and meta).

    samples_per_task: 100 calibration lines per task, the FW paper's count (RegMean takes the same).
    fw_hard: 10 iterations of the model-level LMO with step_size 1, so c_t = 0.6/(t+2) moves θ
    0.3, 0.2, 0.15, ... of the way to the picked expert (Σ c_t = 1.2); the code's default
    step_size 0.1 gives Σ c_t = 0.12, which leaves θ close to its initial point.
    fw_soft: 3 FW iterations of 100 AdaMerging steps; the official 500 steps per iteration cost
    about 4.5x as much (one thread, 4 targets, full-zoo-sized models: 207 s with 500 steps and a
    pool of 4, 46 s with 100 steps and a pool of 20). The inner loss is cross_entropy on the
    calibration responses (the zoo's calibration data is labelled; entropy, AdaMerging's
    unlabelled loss, left fw_soft near the base model: 0.045 on irrelevance4), at ada_lr 1e-2.
    That lr was picked after trying 1e-3 (0.141) and 1e-2 (0.396) on irrelevance4: two looks at
    its test split, so fw_soft's lr is lightly tuned on test. The quick zoo showed no signal
    between fw_hard step sizes 0.1/0.3/1 (within its test noise); they are not tuned.
    """

    samples_per_task: int = 100
    regmean_alpha: float = 0.9
    regmean_samples: int | None = None  # default samples_per_task
    regmean_ridge: float | None = None  # default the method's
    hard_iters: int = 10
    hard_step: float = 1.0
    # fw_hard's starting points and vertex sets: (init, initial_vertex), each one row
    hard_variants: tuple[tuple[str, bool], ...] = (("task_arithmetic", False), ("from", False))
    soft_iters: int = 3
    ada_iters: int = 100
    ada_lr: float = 1e-2
    ada_loss: str = "cross_entropy"
    ada_batch_size: int = 16
    # AdaMerging as its paper runs it (entropy on the targets' prompts, layer-wise); 0 steps: no AdaMerging row
    adamerging_iters: int = 0
    adamerging_lr: float = 1e-3

    @classmethod
    def quick(cls) -> "DataDefaults":
        return cls(samples_per_task=32, hard_iters=4, soft_iters=2, ada_iters=10)

    def runs(self, zoo: Zoo, setting: "Setting") -> list[Run]:
        targets = {t: str(zoo.calibration(t)) for t in setting.tasks}
        common = {"samples_per_task": self.samples_per_task}
        hard = {**common, "max_iters": self.hard_iters, "step_size": self.hard_step}
        ada = {"ada_batch_size": self.ada_batch_size}
        regmean = {"samples_per_task": self.regmean_samples or self.samples_per_task, "alpha": self.regmean_alpha}
        label = f"regmean α={self.regmean_alpha:g}"
        if self.regmean_ridge is not None:
            regmean["ridge"], label = self.regmean_ridge, f"{label} ridge={self.regmean_ridge:g}"
        runs = [Run(label, "regmean", regmean, full_weights=True)]
        if self.adamerging_iters:
            runs.append(Run("adamerging (layer-wise, entropy)", "adamerging",
                            {**common, **ada, "ada_iters": self.adamerging_iters, "ada_lr": self.adamerging_lr},
                            section={"targets": targets}))
        for init, vertex in self.hard_variants if setting.fw_variants else self.hard_variants[:1]:
            label = f"fw_hard init={init}" + (" initial_vertex" if vertex else "")
            runs.append(Run(label, "fw_hard", {**hard, "init": init, **({"initial_vertex": True} if vertex else {})},
                            section={"targets": targets}))
        soft = {**common, **ada, "max_iters": self.soft_iters, "ada_iters": self.ada_iters, "ada_lr": self.ada_lr,
                "ada_loss": self.ada_loss}
        runs.append(Run("fw_soft", "fw_soft", soft, section={"targets": targets}))
        return runs


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # "fft" or "lora"
    tasks: tuple[str, ...]  # the objective's and the evaluation's tasks
    pool: tuple[str, ...] = ()  # the experts merged (default: the tasks), of this setting's kind
    methods: tuple[Run | Tuned, ...] = tuple(METHODS)
    data_methods: bool = False
    regmean: bool = False  # without the other data-informed methods: RegMean costs forward passes only
    adapters: tuple[str, ...] = ()  # LoRA experts merged after the pool (a mixed pool, as on the Hub)
    fw_variants: bool = True  # False: fw_hard's first variant only

    def __post_init__(self) -> None:
        if not self.pool:
            object.__setattr__(self, "pool", self.tasks)

    @property
    def members(self) -> tuple[str, ...]:
        """The task of every model merged, in the recipe's order."""
        return self.pool + self.adapters

    def pool_names(self) -> list[str]:
        return [*self.pool, *(f"lora-{t}" for t in self.adapters)]

    def models(self, zoo: Zoo, full_weights: bool = False) -> list[str]:
        def lora(task: str) -> str:
            return str(fold_lora(zoo, task)) if full_weights else f"{zoo.base}+{zoo.expert(task, 'lora')}"

        own = [lora(t) for t in self.pool] if self.kind == "lora" else [str(zoo.expert(t)) for t in self.pool]
        return own + [lora(t) for t in self.adapters]

    def entries(self, zoo: Zoo, data: DataDefaults, only: tuple[str, ...] = ()) -> list[Run | Tuned]:
        """The methods run on this setting (``only``: those whose label starts with one of these)."""
        data_runs = [r for r in data.runs(zoo, self) if self.data_methods or (self.regmean and r.method == "regmean")]
        entries = [*self.methods, *data_runs]
        return [e for e in entries if not only or e.label.startswith(only)]


def zoo_cache(zoo: Zoo) -> Path:
    """Where this benchmark caches what it derives from ``zoo``: outside the zoo's folder, which its build command
    owns (a folder of ours in it made the next `realzoo build` refuse the folder as not its own)."""
    return cache_root() / "quality" / hashlib.sha256(str(zoo.root.resolve()).encode()).hexdigest()[:16]


def fold_lora(zoo: Zoo, task: str) -> Path:
    """``lora-<task>`` folded into the base (peft merge_and_unload), saved as safetensors, cached.

    The cache is keyed by the adapter's and the base's weight files (size and mtime)."""
    from mergekit_from.output import replace_atomically
    from mergekit_from.taskzoo import load_model

    adapter = zoo.expert(task, "lora")
    key = [weight_files_state(adapter), weight_files_state(zoo.base)]
    out = zoo_cache(zoo) / "lora-folded" / f"lora-{task}"
    stamp = out / "folded_from.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return out
    model, tokenizer = load_model(adapter, tokenizer_dir=zoo.base, base_dir=zoo.base)
    with replace_atomically(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "folded_from.json").write_text(json.dumps(key))
    return out


def settings(zoo: Zoo) -> list[Setting]:
    targets = tuple(zoo.targets)
    sizes = sorted({n for n in (2, 4, len(targets)) if n <= len(targets)})
    out = [Setting(f"{kind}{n}", kind, targets[:n], data_methods=n == len(targets))
           for kind in ("fft", "lora") for n in sizes]
    # Scaling: 4 targets (fewer in a smaller zoo); the rest of the pool in the zoo's task order.
    t = min(4, len(targets))
    order = targets + tuple(x for x in zoo.tasks if x not in targets)
    for name, multiples in (("irrelevance", (1, 2, 3, 5)), ("relevance", (1, 2, 3))):
        for n in sorted({min(m * t, len(order)) for m in multiples}):
            tasks = order[:t] if name == "irrelevance" else order[:n]
            out.append(Setting(f"{name}{n}", "fft", tasks, order[:n], tuple(SCALING_METHODS), True))
    return out


# The real zoo (SmolLM2-135M; `--real`): a merge costs a few seconds, but one evaluation of 64 questions costs about
# 5 s per task on 2 cores, and a pre-pass gradient over 16 samples per task about 3 s per task, so the grids are
# shorter than the toy's and the data-informed methods run on the 4-target settings (fft4 = irrelevance4, lora4,
# and the irrelevance pools).
REAL_TA_LAMBDAS = (0.3, 0.5, 1.0)
REAL_FROM_KS = (1.0, 2.0, 4.0)
REAL_FROM_LAMBDAS = (1.0, 2.0, 4.0)
REAL_METHODS: list[Run | Tuned] = data_free(REAL_TA_LAMBDAS, REAL_FROM_KS, REAL_FROM_LAMBDAS)
REAL_SCALING: list[Run | Tuned] = [*REAL_METHODS[1:3], REAL_METHODS[3]]  # task arithmetic, ties
REAL_DATA = DataDefaults(
    # RegMean's Grams need more tokens than a layer's input width (1536 for down_proj): 16 samples (~900 tokens)
    # made its solve extrapolate (our guard stopped it, exit 2); its forward passes are cheap, so it reads all 64
    # and at ridge 0.001 (the method's default until then) and 0.01 its reach check refused fft4's down_proj: rows
    # name the ridge they ran at (0.1, now the default)
    samples_per_task=16, regmean_samples=64, regmean_ridge=0.1, hard_iters=6, soft_iters=2, ada_iters=15, ada_batch_size=4,
    adamerging_iters=30,
    adamerging_lr=1e-2,  # 30 steps at the paper's 1e-3 leave the coefficients at their 0.3 start
    hard_variants=(("task_arithmetic", False), ("task_arithmetic", True), ("ties", False)),
)


def real_settings(zoo: Zoo) -> list[Setting]:
    """fft/lora 2, 4, 8 (the 8 targets in order); irrelevance 4, 8, 16: 4 targets, then the other 8 FFT experts,
    then the LoRA experts of targets 5-8 (a pool that mixes full fine-tunes and adapters)."""
    targets = tuple(zoo.targets)
    out = [Setting(f"{kind}{n}", kind, targets[:n], methods=tuple(REAL_METHODS), data_methods=n == 4, regmean=True,
                   fw_variants=kind == "fft") for kind in ("fft", "lora") for n in (2, 4, 8)]
    first, rest = targets[:4], targets[4:] + tuple(t for t in zoo.tasks if t not in targets)
    for n in (4, 8, 16):
        out.append(Setting(f"irrelevance{n}", "fft", first, first + rest[: n - 4], tuple(REAL_SCALING), True,
                           adapters=targets[4:][: max(0, n - 4 - len(rest))], fw_variants=n == 4))
    return out


def normalized_mean(acc: dict[str, float], experts: dict[str, float]) -> float:
    """Mean of merged / expert accuracy over the tasks whose expert scores above 0 (the quick zoo's
    non-target experts can score 0 on a small test sample: nothing to normalize by)."""
    scored = [t for t in acc if experts[t] > 0]
    return sum(acc[t] / experts[t] for t in scored) / len(scored) if scored else 0.0


def _status_mb(key: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux
        return None
    return next(round(int(line.split()[1]) / 1024, 1) for line in status.splitlines() if line.startswith(key + ":"))


def reset_peak_rss() -> float | None:
    """Restart the kernel's peak-RSS count (VmHWM) from the current RSS (returned, MB), so that each merge gets its
    own peak; what the process already held (interpreter, torch, allocator caches) is in both."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: peaks then accumulate over the run
        pass
    return _status_mb("VmRSS")


def fw_picks(merged: Path) -> list[dict[str, float]] | None:
    """Each FW iteration's picks from the merge's trace, as {pool model's folder name: share of its tensors}: which
    experts a score came from (None for a merge without a trace)."""
    from mergekit_from.prepass.trace import TRACE_FILE

    trace = merged / TRACE_FILE
    if not trace.is_file():
        return None
    name = lambda source: Path(source.split("+")[-1]).name  # noqa: E731 (an adapter "base+adapter" by its adapter)
    return [{name(s): round(share, 4) for s, share in it["pick_share"].items()}
            for it in json.loads(trace.read_text())["iterations"]]


def peak_rss_mb() -> float | None:
    """This process's peak RSS (MB) since :func:`reset_peak_rss`; None where /proc is not there."""
    return _status_mb("VmHWM")


class Bench:
    def __init__(self, zoo: Zoo, out: Path, n: int, data: DataDefaults, real: bool = False,
                 only: tuple[str, ...] = ()):
        from mergekit.options import MergeOptions

        self.zoo, self.out, self.n, self.data, self.only = zoo, out, n, data, only
        # the first n test questions are the same for any n, so fewer than the build's are measured here
        self.measured = real and n == zoo.manifest["spec"]["eval_n"]
        self.work = out / "work"
        # base+adapter inputs: mergekit-from's default LoRA merge cache, keyed by the adapters' weights
        self.options = MergeOptions(random_seed=0, quiet=True, write_model_card=True)
        self.seconds: dict[str, float] = {"merge": 0.0, "eval": 0.0}
        # (recipe text, tasks) -> accuracy: grids repeat plain runs, settings share pools
        self.done: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.expert_acc: dict[tuple[str, str], float] = {}

    def eval(self, model_dir: Path, tasks: tuple[str, ...], **kw) -> dict[str, float]:
        t0 = time.perf_counter()
        acc = evaluate(model_dir, tasks, self.n, tokenizer_dir=self.zoo.base, **kw)
        self.seconds["eval"] += time.perf_counter() - t0
        return acc

    def merge_and_eval(self, setting: Setting, run: Run) -> dict[str, Any]:
        """The merge's accuracy on the setting's tasks, its wall seconds and peak RSS (pre-pass and mergekit's
        writing, not the evaluation)."""
        from mergekit_from.recipe import run_recipe

        slug = "".join(c if c.isalnum() or c in ".=-" else "_" for c in run.label)
        models = setting.models(self.zoo, full_weights=run.full_weights)
        calibration = [str(self.zoo.calibration(t)) for t in setting.members] if run.full_weights else []
        text = yaml.safe_dump(run.recipe(str(self.zoo.base), models, calibration), sort_keys=False)
        if (text, setting.tasks) in self.done:
            return self.done[text, setting.tasks]
        recipe = self.work / "recipes" / setting.name / f"{slug}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(text)
        merged = self.work / "merged" / setting.name / slug
        gc.collect()  # the last evaluation's model
        start = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            run_recipe(recipe, merged, self.options)
            error = None
        except MergekitFromError as exc:  # a method that refuses to write (exit 2 for a user) is a result too
            error = one_line(exc)
        seconds = time.perf_counter() - t0
        self.seconds["merge"] += seconds
        row = {"acc": None if error else self.eval(merged, setting.tasks), "seconds": round(seconds, 3),
               "peak_rss_mb": peak_rss_mb(), "start_rss_mb": start, **({"error": error} if error else {})}
        if (picks := fw_picks(merged)) is not None:
            row["picks"] = picks
        shutil.rmtree(merged, ignore_errors=True)  # recipes stay; a merge is cheap to redo next to its evaluation
        self.done[text, setting.tasks] = row
        return row

    def expert(self, kind: str, task: str) -> float:
        if self.measured:  # the build measured every expert on the same test questions
            return self.zoo.accuracy(f"{kind}-{task}")[task]
        if (kind, task) not in self.expert_acc:
            if kind == "lora":
                acc = self.eval(self.zoo.expert(task, "lora"), (task,), base_dir=self.zoo.base)
            else:
                acc = self.eval(self.zoo.expert(task), (task,))
            self.expert_acc[kind, task] = acc[task]
        return self.expert_acc[kind, task]

    def setting(self, setting: Setting, base_acc: dict[str, float], bar,
                saved: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
        """Every method of ``setting``; ``saved`` gets the result so far after each one."""
        experts = {t: self.expert(setting.kind, t) for t in setting.tasks}
        result: dict[str, Any] = {"tasks": list(setting.tasks), "pool": setting.pool_names(),
                                  "base": {t: base_acc[t] for t in setting.tasks},
                                  "experts": experts, "n": self.n, "methods": {}}

        def record(run: Run, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
            score = None if row["acc"] is None else round(normalized_mean(row["acc"], experts), 4)
            return {"method": run.method, "params": {**run.params, **extra}, **row, "normalized_mean": score}

        for entry in setting.entries(self.zoo, self.data, self.only):
            if isinstance(entry, Run):
                lora = setting.kind == "lora" or setting.adapters
                folded = {"inputs": "LoRA folded into the base"} if lora and entry.full_weights else {}
                result["methods"][entry.label] = record(entry, self.merge_and_eval(setting, entry), **folded)
                bar.update(1)
            else:
                grid = {}
                for point in entry.points():
                    grid[point.params[entry.param]] = record(point, self.merge_and_eval(setting, point))
                    bar.update(1)
                best = max(grid, key=lambda v: (grid[v]["normalized_mean"] is not None,
                                                grid[v]["normalized_mean"] or 0, -v))
                result["methods"][entry.label] = {
                    **grid[best],
                    "params": {**grid[best]["params"], "tuned_on": "test",
                               "grid": {str(v): g["normalized_mean"] for v, g in grid.items()}},
                }
            saved(result)
        return result


def _count(entries: list[Run | Tuned]) -> int:
    return sum(len(e.values) if isinstance(e, Tuned) else 1 for e in entries)


def family(name: str) -> str:
    """The curve a setting belongs to: ``fft8`` -> ``fft``, ``irrelevance12`` -> ``irrelevance``."""
    return name.rstrip("0123456789")


SCALINGS = ("irrelevance", "relevance")


def labels_of(sets: dict[str, Any], names: list[str]) -> list[str]:
    """Every method label of these settings, in first-seen order."""
    return list(dict.fromkeys(label for s in names for label in sets[s]["methods"]))


def scaling(data: dict[str, Any]) -> dict[str, Any]:
    """Per scaling and method: normalized mean by pool size, and largest pool over smallest."""
    sets = data["settings"]
    out: dict[str, Any] = {}
    for fam in SCALINGS:
        names = sorted((s for s in sets if family(s) == fam), key=lambda s: len(sets[s]["pool"]))
        if not names:
            continue
        curves = {}
        for label in labels_of(sets, names):
            # a method not run on a pool (a slice, or a run cut off) has no point there
            ys = {str(len(sets[s]["pool"])): sets[s]["methods"][label]["normalized_mean"] for s in names
                  if label in sets[s]["methods"]}
            first, last = ys.get(str(len(sets[names[0]]["pool"]))), ys.get(str(len(sets[names[-1]]["pool"])))
            ratio = round(last / first, 4) if first and last is not None else None
            curves[label] = {"by_pool": ys, "ratio_largest_over_smallest": ratio}
        out[fam] = {"pools": [len(sets[s]["pool"]) for s in names], "targets": sets[names[0]]["tasks"],
                    "methods": curves}
    return out


def _cell(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


def write_markdown(path: Path, data: dict[str, Any]) -> None:
    sets = data["settings"]
    names = list(sets)
    main = [max((s for s in sets if family(s) == k), key=lambda s: len(sets[s]["tasks"]))
            for k in dict.fromkeys(map(family, sets)) if k not in SCALINGS]
    real = data["meta"].get("real", False)
    ns = {s: sets[s].get("n", data["meta"]["n"]) for s in names}  # combined slices may differ
    per_task = (f"{data['meta']['n']}" if len(set(ns.values())) <= 1
                else ", ".join(f"{s} {n}" for s, n in ns.items()))
    lines = [f"# Merge quality on the {'real zoo (SmolLM2-135M-Instruct experts)' if real else 'task zoo'}", "",
             "Normalized mean = mean over tasks of merged exact-match / expert exact-match "
             f"(test examples per task: {per_task}).", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label in labels_of(sets, names):
        cells = [_cell(sets[s]["methods"][label]["normalized_mean"]) if label in sets[s]["methods"] else "—"
                 for s in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for fam, sc in data["meta"].get("scaling", {}).items():
        pools = [str(n) for n in sc["pools"]]
        what = ("objective and evaluation on " + ", ".join(sc["targets"]) + "; the rest of the pool is irrelevant"
                if fam == "irrelevance" else "every pool model is a target, evaluated on all of them")
        lines += ["", f"## Scaling: {fam} ({what})", "",
                  "| method | " + " | ".join(f"pool {n}" for n in pools) + f" | {pools[-1]} / {pools[0]} |",
                  "|---|" + "---:|" * (len(pools) + 1)]
        for label, c in sc["methods"].items():
            ratio = c["ratio_largest_over_smallest"]
            cells = [_cell(c["by_pool"][n]) if n in c["by_pool"] else "—" for n in pools]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'—' if ratio is None else f'{ratio:.3f}'} |")
    for s in main:
        st = sets[s]
        lines += ["", f"## {s}: per-task accuracy", "",
                  "| | " + " | ".join(st["tasks"]) + " |", "|---|" + "---:|" * len(st["tasks"]),
                  "| base | " + " | ".join(f"{st['base'][t]:.3f}" for t in st["tasks"]) + " |",
                  "| expert | " + " | ".join(f"{st['experts'][t]:.3f}" for t in st["tasks"]) + " |"]
        for label, m in st["methods"].items():
            lines.append(f"| {label} | " + " | ".join(_cell(m["acc"] and m["acc"][t]) for t in st["tasks"]) + " |")
    meta = data["meta"]
    if any("seconds" in m for s in names for m in sets[s]["methods"].values()):
        lines += ["", "## Cost of each merge (pre-pass and mergekit's writing; wall seconds, peak RSS over the model's "
                  f"{meta['model_mb']:.0f} MB of weights, in brackets the part above what the process held before)", "",
                  "| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label in labels_of(sets, names):
            cells = []
            for s in names:
                m = sets[s]["methods"].get(label)
                rss, start = (m.get("peak_rss_mb"), m.get("start_rss_mb")) if m else (None, None)
                cost = f"{m['seconds']:.0f} s" if m else "—"
                if rss and start:  # the peak, and what the merge added to what the process held
                    cost += f", {rss / meta['model_mb']:.1f}× (+{(rss - start) / meta['model_mb']:.1f}×)"
                cells.append(cost)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Data-informed methods: " + ", ".join(f"{k}={v}" for k, v in meta["data_methods"].items())
              + " (calibration split only).",
              "", f"Zoo: `{meta['zoo']}`. Wall time {meta['seconds']['total']:.0f} s "
                  f"(merges {meta['seconds']['merge']:.0f} s, evaluation {meta['seconds']['eval']:.0f} s).", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, data: dict[str, Any], families: list[str], xlabel: str, x_key: str) -> None:
    """One panel per setting family; x is the size of each setting's ``x_key`` list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = data["settings"]
    families = [f for f in families if any(family(s) == f for s in sets)]
    if not families:
        return
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 4.8), squeeze=False, sharey=True)
    all_labels = labels_of(sets, list(sets))
    cmap = plt.get_cmap("tab20")
    for ax, fam in zip(axes[0], families):
        names = sorted((s for s in sets if family(s) == fam), key=lambda s: len(sets[s][x_key]))
        for label in labels_of(sets, names):
            pts = [(len(sets[s][x_key]), sets[s]["methods"][label]["normalized_mean"])
                   for s in names if (sets[s]["methods"].get(label) or {}).get("normalized_mean") is not None]
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", color=cmap(all_labels.index(label) % 20), label=label,
                    linestyle="--" if "tuned" in label else "-", linewidth=2.5 if label.startswith("fw") else 1.5)
        xs = [len(sets[s][x_key]) for s in names]
        floor = [normalized_mean(sets[s]["base"], sets[s]["experts"]) for s in names]
        ax.plot(xs, floor, color="black", linestyle=":", label="base model (no merge)")
        ax.set_title(f"{fam}: " + ", ".join(sets[names[0]]["tasks"]) if fam == "irrelevance" else fam)
        ax.set_xlabel(xlabel)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalized accuracy (merged / expert)")
    legend = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels())}  # every panel's
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
            mb = sb["methods"].get(label)
            if mb is None or ma["acc"] is None or mb["acc"] is None:
                continue
            diffs = [abs(ma["normalized_mean"] - mb["normalized_mean"])]
            diffs += [abs(ma["acc"][t] - mb["acc"][t]) for t in ma["acc"]]
            worst = max(worst, 100 * max(diffs))
    return worst


def write_report(out: Path, data: dict[str, Any]) -> None:
    (out / "quality.json").write_text(json.dumps(data, indent=1))
    write_markdown(out / "quality.md", data)
    write_plot(out / "quality.png", data, ["fft", "lora"], "experts merged", "tasks")
    write_plot(out / "scaling.png", data, list(SCALINGS), "models in the pool", "pool")
    print((out / "quality.md").read_text())


def combine(parts: list[Path], out: Path) -> dict[str, Any]:
    """One report from runs of ``--only`` slices (e.g. one process per core): their settings in the given order, the
    first run's meta, seconds summed and each part's own wall time kept. A setting in several runs (methods added by
    a later run) joins their rows when the runs measured the same setting: tasks, pool, base and experts' scores."""
    runs = [json.loads((part / "quality.json").read_text()) for part in parts]
    settings: dict[str, Any] = {}
    for run in runs:
        for name, st in run["settings"].items():
            if name not in settings:
                settings[name] = {**st, "methods": dict(st["methods"])}
                continue
            have = settings[name]
            if any(have[k] != st[k] for k in ("tasks", "pool", "base", "experts")):
                raise SystemExit(f"--combine: setting {name!r} differs between runs (its pool or its experts' scores)")
            if twice := sorted(set(have["methods"]) & set(st["methods"])):
                raise SystemExit(f"--combine: {twice[0]!r} of setting {name!r} is in more than one run")
            have["methods"].update(st["methods"])
    data: dict[str, Any] = {"settings": settings}
    seconds = {k: round(sum(r["meta"]["seconds"][k] for r in runs), 1) for k in runs[0]["meta"]["seconds"]}
    data["meta"] = {**runs[0]["meta"], "scaling": scaling(data), "seconds": seconds,
                    "parts": [{"out": str(part), "settings": list(r["settings"]), "seconds": r["meta"]["seconds"]}
                              for part, r in zip(parts, runs)]}
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, data)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="the quick zoo (for tests; numbers mean little)")
    ap.add_argument("--real", action="store_true",
                    help="the real zoo (SmolLM2-135M-Instruct experts, `mergekit-from realzoo build`)")
    ap.add_argument("--zoo", type=Path, default=None, help="zoo folder (built there if missing)")
    ap.add_argument("--n", type=int, default=None, help="test examples per task (default 200, quick 64, real 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated setting names to run (default all)")
    ap.add_argument("--methods", default="", help="comma-separated method label prefixes to run (default all)")
    ap.add_argument("--regmean-ridge", type=float, default=None,
                    help="RegMean's ridge (default: the method's on the task zoo, 0.1 on the real zoo)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="an earlier quality.json: print the largest difference (determinism check)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None, metavar="DIR",
                    help="join the quality.json of runs over disjoint --only slices into --out, and stop")
    args = ap.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.real:
        from mergekit_from.realzoo import build_realzoo, load_realzoo
        from mergekit_from.realzoo.build import default_realzoo_dir

        root = args.zoo or default_realzoo_dir()  # a complete zoo is measured as it is; a missing one is built
        zoo = load_realzoo(root) if (root / MANIFEST).is_file() else build_realzoo(root, threads=args.threads)
        n = args.n or zoo.manifest["spec"]["eval_n"]
        data_defaults, chosen = REAL_DATA, real_settings(zoo)
    else:
        zoo = build_zoo(args.zoo, quick=args.quick, threads=args.threads)
        n = args.n or (64 if args.quick else 200)
        data_defaults, chosen = DataDefaults.quick() if args.quick else DataDefaults(), settings(zoo)
    if args.regmean_ridge is not None:
        data_defaults = replace(data_defaults, regmean_ridge=args.regmean_ridge)
    args.out.mkdir(parents=True, exist_ok=True)
    only = tuple(m for m in args.methods.split(",") if m)
    bench = Bench(zoo, args.out, n, data_defaults, real=args.real, only=only)
    if args.only:
        keep = set(args.only.split(","))
        chosen = [s for s in chosen if s.name in keep]
    tasks = tuple(dict.fromkeys(t for s in chosen for t in s.tasks))
    base_acc = {t: zoo.accuracy("base")[t] for t in tasks} if bench.measured else bench.eval(zoo.base, tasks)
    model_mb = sum(f.stat().st_size for f in zoo.base.glob("*.safetensors")) / 2**20
    data: dict[str, Any] = {"settings": {}}

    def meta() -> dict[str, Any]:
        return {"zoo": str(zoo.root), "real": args.real, "quick": args.quick, "n": n, "threads": args.threads,
                "model_mb": round(model_mb, 1), "data_methods": asdict(data_defaults), "scaling": scaling(data),
                "seconds": {**{k: round(v, 1) for k, v in bench.seconds.items()},
                            "total": round(time.perf_counter() - t0, 1)}}

    total = sum(_count(s.entries(zoo, data_defaults, only)) for s in chosen)
    with tqdm(total=total, desc="quality", unit="merge") as bar:
        for setting in chosen:
            def save(result: dict[str, Any], name: str = setting.name) -> None:
                # what has run so far, down to the last method, survives an interrupted run
                data["settings"][name] = result
                (args.out / "quality.json").write_text(json.dumps({**data, "meta": meta()}, indent=1))

            save(bench.setting(setting, base_acc, bar, save))
    shutil.rmtree(bench.work / "merged", ignore_errors=True)
    data["meta"] = meta()
    write_report(args.out, data)
    if args.compare:
        data["meta"]["max_diff_points_vs_previous"] = compare(data, json.loads(args.compare.read_text()))
        print(f"largest difference to {args.compare}: {data['meta']['max_diff_points_vs_previous']:.2f} points")
        (args.out / "quality.json").write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
