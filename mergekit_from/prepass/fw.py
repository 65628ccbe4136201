"""FW-Merging (Chen et al., ICCV 2025, arXiv:2503.12649) as a pre-pass with a streamed pool.

The optimiser follows the official code (hmarkc/FW-Merging, FusionBench ``fw_merging``):

- **hard**: θ₀ = init (task arithmetic λ=0.3, base, FroM, or a given model). Each iteration takes
  the gradient g of the objective at θ_t, picks a vertex s with the LMO, and moves
  θ ← θ + c_t·D(s − θ) with c_t = step_size·2/(t+2)·scaling_factor, D = identity (task
  arithmetic) or TIES trimming of the single direction.
- **soft**: one gradient per target task, one distinct pick per target, then an AdaMerging inner
  loop learns one coefficient per (pick, tensor) with Adam: θ ← θ + Σ_k c_k,p (s_k,p − θ_p).

LMO scores, per stored tensor p and candidate m: the official cosine ⟨g_p, θ_m,p⟩ / (‖g_p‖‖θ_m,p‖)
or the textbook ⟨g_p, θ_m,p − θ_p⟩; ``lmo: model`` sums them over tensors and picks one model,
``lmo: tensor`` picks per tensor.

Unlike the official code, candidates are never all in memory: scoring streams them one tensor
at a time from their memory-mapped safetensors, and an update re-reads the picked vertex tensor
by tensor. Held at any time: the iterate, its gradient (soft: the K picked task vectors) and
one candidate tensor. The result is a *plan* (initial point + moves) that the per-tensor kernel
in :mod:`mergekit_from.methods.fw_merge` replays inside mergekit's executor.

Deliberate differences, documented in the README: the same first ``samples_per_task`` samples
are used at every iteration (the official ViT code draws fresh ones); batches are padded rather
than of size 1 (the per-sample mean loss is the same); the initial model is a vertex only with
``initial_vertex: true``; TIES trims per tensor (FusionBench trims over the flattened model).
"""

from __future__ import annotations

import json
import math
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Sequence, Union

import torch
from mergekit.config import InputModelDefinition, MergeConfiguration
from mergekit.options import MergeOptions
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from mergekit_from import calibration
from mergekit_from.errors import ConfigError, ModelInputError, TensorValueError
from mergekit_from.finite import checked, is_finite
from mergekit_from.methods.from_merge import from_coefficients
from mergekit_from.prepass import (
    Pool,
    batch_loss,
    copy_data,
    layout_mismatch,
    load_skeleton,
    merge_parameters,
    progress,
    read_settings,
    ref_string,
    resolve_path,
    set_setting,
    task_objective,
)
from mergekit_from.weights import TensorIndex

LOG = logging.getLogger(__name__)

PLAN_FILE = "fw_plan.json"
TRACE_FILE = "fw_trace.json"
PLOT_FILE = "fw_trace.png"
INITIAL_DIR = "fw_initial"
INIT_KEYWORDS = ("task_arithmetic", "base", "from")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1)]
_INIT_HELP = "θ₀: task_arithmetic (λ = init_lambda) | base | from (FroM, k = from_k) | a model folder"


class CommonSettings(BaseModel):
    """Settings shared by fw_hard and fw_soft (recipe section or top-level ``parameters:``);
    each field's description says what it does (``mergekit-from methods`` lists them).

    Example recipe (data paths are relative to the recipe's folder)::

        merge_method: fw_hard
        base_model: ./base
        models: [{model: ./expert_rev}, {model: ./expert_sort}, {model: ./expert_shift}]
        fw_hard:
          targets: {rev: data/rev.jsonl}     # {"prompt","response"} or {"text"} lines
          max_iters: 10
          lmo: tensor
    """

    model_config = ConfigDict(extra="forbid")

    targets: Union[dict[str, str], list[str]] = Field(
        description="the tasks the merge is for: {task: JSONL file} or a list of files (task = file stem)"
    )
    samples_per_task: PositiveInt = Field(100, description="first lines of each target file used (official: 100)")
    max_length: PositiveInt = Field(256, description="tokenisation cut-off of the objective's samples")
    batch_size: PositiveInt = Field(8, description="padded batch size of the objective")
    max_iters: PositiveInt = Field(10, description="Frank-Wolfe iterations")
    init: str = Field("task_arithmetic", description=_INIT_HELP)
    init_lambda: PositiveFloat = Field(0.3, description="task arithmetic's λ for init: task_arithmetic")
    from_k: Annotated[float, Field(ge=0)] = Field(2.0, description="FroM's k for init: from")
    lmo: Literal["model", "tensor"] = Field(
        "model", description="model: one pick per iteration | tensor: one pick per stored tensor"
    )
    score: Literal["cosine", "inner_product"] = Field(
        "cosine", description="LMO score: cosine (official, against full weights) | inner_product (⟨g, s − θ⟩)"
    )
    objective: Literal["cross_entropy", "entropy"] = Field(
        "cross_entropy", description="cross_entropy on responses | entropy of next-token predictions on prompts"
    )
    initial_vertex: bool = Field(False, description="θ₀ is a candidate too (the official ViT code does this)")
    skip_incompatible: bool = Field(
        False, description="leave out pool models whose layout differs from the base (warns)"
    )
    preload_candidates: bool = Field(
        False, description="hold every candidate in RAM like the official code (benchmarks only)"
    )
    tokenizer: Optional[str] = Field(None, description="folder to load the tokenizer from (default: the base)")
    trust_remote_code: bool = Field(False, description="run the model's own code when loading it and its tokenizer")
    seed: int = Field(0, description="seed of the random draws (torch, AdaMerging's batches)")


class HardSettings(CommonSettings):
    """fw_hard: the step θ ← θ + c_t·D(s − θ) with c_t = step_size·2/(t+2)·scaling_factor."""

    step_size: PositiveFloat = Field(0.1, description="step size of c_t = step_size·2/(t+2)·scaling_factor")
    scaling_factor: PositiveFloat = Field(0.3, description="task arithmetic's scale in c_t")
    update: Literal["task_arithmetic", "ties"] = Field(
        "task_arithmetic", description="direction D: task_arithmetic (s − θ) | ties (s − θ, ties_density kept)"
    )
    ties_density: Fraction = Field(0.2, description="share of entries a ties update keeps")


class SoftSettings(CommonSettings):
    """fw_soft: per iteration, one pick per target, then AdaMerging learns their coefficients."""

    # Measured on the task zoo (README "Which FW variant"; benchmarks/quality.py DataDefaults): the paper's
    # entropy loss, lr 1e-3 and 500 steps left the merge near, or worse than, the base.
    init: str = Field("base", description=_INIT_HELP)
    max_iters: PositiveInt = Field(3, description="Frank-Wolfe iterations")
    ada_iters: PositiveInt = Field(100, description="Adam steps of the AdaMerging inner loop per iteration")
    ada_lr: PositiveFloat = Field(1e-2, description="Adam's learning rate")
    ada_coeff: float = Field(1e-2, description="starting coefficient of each pick after the first iteration")
    ada_first_coeff: float = Field(0.3, description="starting coefficient of each pick at the first iteration")
    ada_batch_size: PositiveInt = Field(16, description="samples drawn per target for each Adam step")
    ada_loss: Literal["entropy", "cross_entropy"] = Field(
        "cross_entropy", description="inner loop's loss: cross_entropy on responses | entropy (AdaMerging, label-free)"
    )


# --------------------------------------------------------------------------------------------
# The update rule, shared by the optimiser and the per-tensor kernel so that replay is exact.


def ties_trim(direction: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (TIES on one vector)."""
    k = max(1, int(round(density * direction.numel())))
    if k >= direction.numel():
        return direction
    flat = direction.abs().flatten()
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return torch.where(direction.abs() >= threshold, direction, torch.zeros_like(direction))


def fw_step(theta: torch.Tensor, moves: Sequence[tuple[float, torch.Tensor]], density: float | None) -> torch.Tensor:
    """θ + Σ c·D(s − θ) in fp32, every direction taken from the same θ."""
    theta = theta.float()
    out = theta.clone()
    for coef, vertex in moves:
        direction = vertex.float() - theta
        if density is not None:
            direction = ties_trim(direction, density)
        out.add_(direction, alpha=coef)
    return out


def step_coefficient(t: int, step_size: float, scaling_factor: float) -> float:
    """The official open-loop schedule: γ_t = step_size · 2/(t+2), scaled by the TA factor."""
    return step_size * 2.0 / (t + 2) * scaling_factor


def effective_coefficients(
    plan: dict[str, Any], base_ref: str, initial: Callable[[str], dict[str, float]], numels: dict[str, int]
) -> dict[str, float]:
    """Each source's coefficient on its task vector in the result, θ = base + Σ_i a_i τ_i.

    Per tensor, a starts at θ₀'s coefficients (``initial(name)``) and every step
    θ ← θ + Σ c (s − θ) makes a ← (1 − Σ c)·a + Σ c·e_s; the per-tensor values are averaged
    weighted by tensor size. Under TIES updates the trimmed directions make these nominal.
    """
    from mergekit_from.methods.fw_merge import per_tensor

    totals: dict[str, float] = {}
    size = sum(numels[n] for n in plan["tensors"])
    for name in plan["tensors"]:
        theta0 = initial(name)
        a = dict(theta0)
        for moves in plan["steps"]:
            cs = [(per_tensor(m["coef"], name), per_tensor(m["vertex"], name)) for m in moves]
            keep = 1.0 - sum(c for c, _ in cs)
            a = {r: keep * v for r, v in a.items()}
            for c, vertex in cs:
                vec = theta0 if vertex == plan["initial"] else {} if vertex == base_ref else {vertex: 1.0}
                for r, x in vec.items():
                    a[r] = a.get(r, 0.0) + c * x
        for r, v in a.items():
            totals[r] = totals.get(r, 0.0) + v * numels[name] / size
    return {r: round(v, 6) for r, v in sorted(totals.items())}


def lmo_picks(
    scores: torch.Tensor, names: list[str], granularity: str, exclude: Sequence[dict[str, int]] = ()
) -> dict[str, int]:
    """Per tensor, the candidate the LMO picks from a [candidates, tensors] score matrix.

    ``model``: the candidate with the lowest summed score, for every tensor; ``tensor``: the
    lowest score per tensor. ``exclude`` holds earlier picks (soft: one distinct vertex per target).
    """
    scores = scores.clone()
    for prior in exclude:
        for j, name in enumerate(names):
            scores[prior[name], j] = float("inf")
    if granularity == "model":
        best = int(torch.argmin(scores.sum(1)))
        return {name: best for name in names}
    return {name: int(b) for name, b in zip(names, torch.argmin(scores, dim=0).tolist())}


# --------------------------------------------------------------------------------------------


def _target_files(settings: CommonSettings, recipe_dir: Path) -> dict[str, Path]:
    targets = settings.targets
    if isinstance(targets, list):
        targets = {Path(f).stem: f for f in targets}
    if not targets:
        raise ConfigError("targets: give at least one target task's calibration file")
    return {task: resolve_path(f, recipe_dir, "calibration file not found") for task, f in targets.items()}


@dataclass
class Vertices:
    """Candidate vertices: the pool (streamed or preloaded) plus, optionally, the initial model."""

    pool: Pool
    initial: TensorIndex | None
    initial_ref: str
    preloaded: list[dict[str, torch.Tensor]] | None = None

    @property
    def refs(self) -> list[str]:
        return self.pool.refs + ([self.initial_ref] if self.initial is not None else [])

    def tensor(self, i: int, name: str) -> torch.Tensor:
        if i == len(self.pool):
            return self.initial.tensor(name).float()
        if self.preloaded is not None:
            return self.preloaded[i][name]
        return self.pool.tensor(i, name)


@dataclass
class Trace:
    method: str
    settings: dict[str, Any]
    pool: list[str]
    targets: list[str]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    final_objective: float | None = None
    coefficients: dict[str, float] = field(default_factory=dict)

    def write(self, out_dir: Path) -> None:
        (out_dir / TRACE_FILE).write_text(json.dumps(self.__dict__, indent=1))
        plot_trace(self, out_dir / PLOT_FILE)


def plot_trace(trace: Trace, path: Path, labels: dict[str, str] | None = None) -> None:
    """Save :func:`trace_figure` as a PNG whose metadata lists the candidates as labelled."""
    import matplotlib.pyplot as plt

    fig = trace_figure(trace, labels)
    names = ", ".join(t.get_text() for t in fig.axes[1].get_yticklabels())
    fig.savefig(path, dpi=110, metadata={"Title": fig.axes[0].get_title(), "Description": f"candidates: {names}"})
    plt.close(fig)


def trace_figure(trace: Trace, labels: dict[str, str] | None = None):
    """Objective per iteration, and which models were picked (share of tensors) per iteration.

    Candidates are labelled by ``labels[ref]`` (e.g. Hub repo ids), else by their folder name."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = trace.iterations
    xs = [it["iter"] for it in its] + [len(its)]
    ys = [it["objective"] for it in its] + [trace.final_objective]
    names = [(labels or {}).get(r) or Path(r).name or r for r in trace.pool]
    share = torch.zeros(len(names), len(its))
    for j, it in enumerate(its):
        for ref, frac in it["pick_share"].items():
            if ref in trace.pool:
                share[trace.pool.index(ref), j] += frac
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 3 + 0.25 * len(names)), sharex=True)
    ax1.plot(xs, ys, marker="o")
    ax1.set_ylabel(f"objective ({trace.settings['objective']})")
    title = f"{trace.method}: targets {', '.join(trace.targets)} (last point: after the last step)"
    ax1.set_title(textwrap.fill(title, 70), fontsize=9)  # wrapped: tight_layout keeps every line in the figure
    extent = (-0.5, len(its) - 0.5, len(names) - 0.5, -0.5)
    ax2.imshow(share.numpy(), aspect="auto", cmap="Blues", vmin=0, interpolation="nearest", extent=extent)
    ax2.set_yticks(range(len(names)), names, fontsize=7)
    ax2.set_xlim(-0.5, len(its) + 0.5)
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("picked (share of tensors)")
    fig.tight_layout()
    return fig


class FWPrePass:
    """Checks a fw_hard / fw_soft recipe up front; :meth:`run` optimises and returns the config."""

    def __init__(self, method: str, config: MergeConfiguration, raw: dict[str, Any], recipe_dir: Path):
        self.method = method
        self.soft = method == "fw_soft"
        self.quiet = False
        model = SoftSettings if self.soft else HardSettings
        self.settings = read_settings(model, raw, config, section=method)
        self.pool = Pool.from_config(config, method, self.settings.skip_incompatible)
        self.config = self.pool.without_skipped(config)
        self.files = _target_files(self.settings, recipe_dir)
        self.samples = calibration.load_tasks(self.files, self.settings.samples_per_task)
        self.init_dir = self._check_init(recipe_dir)
        self._init_weights: dict[str, list[float]] = {}  # θ₀'s per-tensor source weights (TA / FroM init)
        self.tokenizer_dir = None
        if self.settings.tokenizer:
            self.tokenizer_dir = resolve_path(self.settings.tokenizer, recipe_dir, "tokenizer folder not found",
                                              Path.is_dir)
        tok_dir = self.tokenizer_dir or Path(self.pool.base.root)
        self.tokenizer = calibration.load_tokenizer(tok_dir, self.settings.trust_remote_code)
        self.inputs = [*self.files.values(), *filter(None, (self.init_dir, self.tokenizer_dir))]

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        copies = copy_data(list(self.files.items()), out_dir)
        set_setting(raw, self.method, "targets", dict(zip(self.files, copies)))
        for key, path in (("init", self.init_dir), ("tokenizer", self.tokenizer_dir)):
            if path is not None:
                set_setting(raw, self.method, key, str(path.resolve()))

    def _check_init(self, recipe_dir: Path) -> Path | None:
        init = self.settings.init
        if init in INIT_KEYWORDS:
            return None
        path = resolve_path(init, recipe_dir, f"init: neither one of {'|'.join(INIT_KEYWORDS)} nor a model folder",
                            TensorIndex.is_model_dir)
        problem = layout_mismatch(self.pool.base, TensorIndex.open(path))
        if problem:
            raise ModelInputError(f"init model {init} is incompatible with the base: {problem}")
        return path

    # -- pieces of the optimisation ----------------------------------------------------------

    def _initialise(self, params: dict[str, torch.nn.Parameter], work_dir: Path) -> tuple[TensorIndex, str]:
        """Set the iterate to θ₀; returns where θ₀ lives on disk (base, init model, or written)."""
        s, pool, base = self.settings, self.pool, self.pool.base
        if s.init == "base" or self.init_dir is not None:
            index = base if s.init == "base" else TensorIndex.open(self.init_dir)
            who = f"base model {pool.base_ref!r}" if s.init == "base" else f"init model {str(self.init_dir)!r}"
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(checked(index.tensor(name).float(), who, name))
            return index, (pool.base_ref if s.init == "base" else ref_string(str(self.init_dir)))
        values: dict[str, torch.Tensor] = {}
        for name in progress(base.shapes, f"init ({s.init})", quiet=self.quiet):
            if not base.tensor(name).is_floating_point():
                values[name] = base.tensor(name)
                continue
            b = pool.base_tensor(name)
            if s.init == "task_arithmetic":
                weights = [s.init_lambda] * len(pool)
            else:
                norms = torch.tensor([float((pool.tensor(i, name) - b).norm()) for i in range(len(pool))])
                weights = from_coefficients(norms, torch.ones(len(pool)), s.from_k).tolist()
            self._init_weights[name] = weights
            acc = b.clone()
            for i, w in enumerate(weights):
                if w:
                    acc.add_(pool.tensor(i, name) - b, alpha=w)
            acc = acc.to(base.tensor(name).dtype)
            if name in params:
                with torch.no_grad():
                    params[name].copy_(acc)
                values[name] = params[name].detach()
            else:
                values[name] = acc
        out = work_dir / INITIAL_DIR
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in values.items()}, str(out / "model.safetensors"), {"format": "pt"})
        (out / "config.json").write_text((Path(base.root) / "config.json").read_text())
        return TensorIndex.open(out), ref_string(str(out))

    def _initial_coefficients(self, name: str) -> dict[str, float]:
        """θ₀'s coefficients on the sources' task vectors for tensor ``name``."""
        if self.settings.init == "base":
            return {}
        if self.init_dir is not None:
            return {ref_string(str(self.init_dir)): 1.0}
        return dict(zip(self.pool.refs, self._init_weights[name]))

    def _scores(self, vertices: Vertices, params: dict[str, torch.nn.Parameter], grads: dict[str, torch.Tensor]):
        """Score matrix [candidates, tensors]; candidates outermost so one is read at a time.

        Dot products rather than elementwise products: no model-sized temporaries, ~3x faster.
        """
        names = list(params)
        flat = {n: grads[n].flatten() for n in names}
        scores = torch.zeros(len(vertices.refs), len(names), dtype=torch.float64)
        cosine = self.settings.score == "cosine"
        gnorms = {n: float(torch.linalg.vector_norm(flat[n])) for n in names}
        g_theta = {} if cosine else {n: float(torch.dot(flat[n], params[n].detach().flatten())) for n in names}
        for i in progress(range(len(vertices.refs)), "LMO", quiet=self.quiet):
            for j, name in enumerate(names):
                w = vertices.tensor(i, name).flatten()
                dot = float(torch.dot(flat[name], w))
                if cosine:
                    denom = gnorms[name] * float(torch.linalg.vector_norm(w))
                    scores[i, j] = dot / denom if denom > 0 else 0.0
                else:
                    scores[i, j] = dot - g_theta[name]  # ⟨g, s − θ⟩
                del w
        return scores

    def _pick_record(self, vertices: Vertices, picks: dict[str, int]) -> dict[str, Any]:
        refs = vertices.refs
        chosen = {refs[i] for i in picks.values()}
        share = {r: sum(1 for i in picks.values() if refs[i] == r) / len(picks) for r in chosen}
        record: dict[str, Any] = {"pick_share": share}
        if self.settings.lmo == "model":
            record["picked"] = next(iter(chosen))
        else:
            record["picked_by_tensor"] = {n: refs[i] for n, i in picks.items()}
        return record

    # -- the loop -----------------------------------------------------------------------------

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        s = self.settings
        self.quiet = options.quiet
        torch.manual_seed(s.seed)
        base_dir = Path(self.pool.base.root)
        pad = self.tokenizer.pad_token_id
        encoded = {t: calibration.encode(v, self.tokenizer, s.max_length) for t, v in self.samples.items()}
        task_batches = [list(calibration.batches(e, s.batch_size, pad)) for e in encoded.values()]
        counts = [len(e) for e in encoded.values()]

        model = load_skeleton(base_dir, s.trust_remote_code, role="base model")
        params = merge_parameters(model, self.pool.base)
        optimised = {id(p) for p in params.values()}
        for p in model.parameters():
            p.requires_grad_(id(p) in optimised)
        initial_index, initial_ref = self._initialise(params, work_dir)
        vertices = Vertices(self.pool, initial_index if s.initial_vertex else None, initial_ref)
        if s.preload_candidates:
            vertices.preloaded = [{n: self.pool.tensor(i, n).clone() for n in params} for i in range(len(self.pool))]

        trace = Trace(self.method, s.model_dump(), vertices.refs, list(self.samples))
        names = list(params)
        steps: list[list[dict[str, Any]]] = []
        for t in progress(range(s.max_iters), self.method, quiet=self.quiet):
            started, cpu = time.perf_counter(), time.process_time()
            if self.soft:
                record, moves = self._soft_iteration(t, model, params, vertices, task_batches, counts, encoded)
            else:
                record, moves = self._hard_iteration(t, model, params, vertices, task_batches, counts)
            elapsed = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
            trace.iterations.append({"iter": t, **record, **elapsed})
            steps.append(moves)
            LOG.info("%s iter %d: objective %.5f", self.method, t, record["objective"])
        trace.final_objective = self._finite(
            task_objective(model, task_batches, counts, s.objective, backward=False), "after the last iteration"
        )

        plan = {
            "format": 1,
            "method": self.method,
            "initial": initial_ref,
            "tensors": names,
            "density": s.ties_density if not self.soft and s.update == "ties" else None,
            "steps": steps,
        }
        (work_dir / PLAN_FILE).write_text(json.dumps(plan))  # it names θ₀'s temporary folder
        numels = {n: math.prod(shape) for n, shape in self.pool.base.shapes.items()}
        trace.coefficients = effective_coefficients(plan, self.pool.base_ref, self._initial_coefficients, numels)
        trace.write(out_dir)
        return self._merge_config(plan, work_dir / PLAN_FILE)

    def _finite(self, value: float, where: str, grads: dict[str, torch.Tensor] | None = None) -> float:
        """Stop when the objective (or its gradient) turns NaN/Inf: every later step would spread it.

        The weights read so far were checked, so the activations overflow on the calibration data.
        """
        if not math.isfinite(value) or not all(is_finite(g) for g in (grads or {}).values()):
            raise TensorValueError(
                f"{self.method}: the objective or its gradient turned NaN/Inf {where}: the model's "
                "activations overflow on the calibration data (check the weights of the pool and the base)"
            )
        return value

    def _gradient(self, model, params, batches, counts, objective, where: str) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        value = task_objective(model, batches, counts, objective, backward=True)
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
        return self._finite(value, where, grads), grads

    def _hard_iteration(self, t, model, params, vertices, task_batches, counts):
        s = self.settings
        where = f"at iteration {t} (targets {', '.join(self.samples)})"
        objective, grads = self._gradient(model, params, task_batches, counts, s.objective, where)
        names = list(params)
        picks = lmo_picks(self._scores(vertices, params, grads), names, s.lmo, [])
        model.zero_grad(set_to_none=True)
        del grads
        coef = step_coefficient(t, s.step_size, s.scaling_factor)
        density = s.ties_density if s.update == "ties" else None
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(fw_step(p, [(coef, vertices.tensor(picks[name], name))], density))
        refs = vertices.refs
        vertex = refs[picks[names[0]]] if s.lmo == "model" else {n: refs[i] for n, i in picks.items()}
        record = {"objective": objective, "step": coef, **self._pick_record(vertices, picks)}
        return record, [{"coef": coef, "vertex": vertex}]

    def _soft_iteration(self, t, model, params, vertices, task_batches, counts, encoded):
        s = self.settings
        names = list(params)
        chosen: list[dict[str, int]] = []
        objective = 0.0
        for k, task in enumerate(self.samples):
            if len(chosen) >= len(vertices.refs):
                break
            where = f"at iteration {t} (target {task})"
            value, grads = self._gradient(model, params, [task_batches[k]], [counts[k]], s.objective, where)
            objective += value / len(task_batches)
            chosen.append(lmo_picks(self._scores(vertices, params, grads), names, s.lmo, chosen))
            del grads
        model.zero_grad(set_to_none=True)
        # K task vectors s_k − θ_t: the only candidate data held in memory at once.
        with torch.no_grad():
            taus = [{n: vertices.tensor(pick[n], n) - params[n].detach() for n in names} for pick in chosen]
        start = s.ada_first_coeff if t == 0 else s.ada_coeff
        coeffs = torch.full((len(chosen), len(names)), float(start), requires_grad=True)
        losses = self._adamerging(model, params, taus, coeffs, encoded, t)
        with torch.no_grad():
            for j, n in enumerate(names):
                params[n].add_(sum(coeffs[k, j] * taus[k][n] for k in range(len(chosen))))
        refs = vertices.refs
        moves, picked = [], []
        for k, pick in enumerate(chosen):
            vertex = refs[pick[names[0]]] if s.lmo == "model" else {n: refs[i] for n, i in pick.items()}
            moves.append({"coef": dict(zip(names, coeffs[k].detach().tolist())), "vertex": vertex})
            picked.append(self._pick_record(vertices, pick))
        share: dict[str, float] = {}
        for rec in picked:
            for r, v in rec["pick_share"].items():
                share[r] = share.get(r, 0.0) + v
        record = {
            "objective": objective,
            "picks_per_target": dict(zip(list(self.samples)[: len(picked)], picked)),
            "pick_share": share,
            "inner_loss": losses,
            "mean_coefficient": [float(coeffs[k].detach().mean()) for k in range(len(chosen))],
        }
        return record, moves

    def _adamerging(self, model, params, taus, coeffs, encoded, t: int) -> dict[str, Any]:
        """Adam on the per-(pick, tensor) coefficients; returns the inner loss curve."""
        s = self.settings
        names = list(params)
        rng = random.Random(s.seed)
        optimizer = torch.optim.Adam([coeffs], lr=s.ada_lr)
        curve = []
        for step in progress(range(s.ada_iters), "AdaMerging", quiet=self.quiet):
            merged = {
                n: params[n].detach() + sum(coeffs[k, j] * taus[k][n] for k in range(len(taus)))
                for j, n in enumerate(names)
            }
            loss = torch.zeros(())
            for items in encoded.values():
                picked = rng.sample(items, min(s.ada_batch_size, len(items)))
                batch = calibration.collate(picked, self.tokenizer.pad_token_id)
                loss = loss + batch_loss(model, batch, s.ada_loss, params=merged) / len(picked)
            optimizer.zero_grad()
            loss.backward()
            self._finite(loss.item(), f"at iteration {t}, AdaMerging step {step}", {"coefficients": coeffs.grad})
            optimizer.step()
            curve.append(loss.item())
        return {"first": curve[0], "last": curve[-1], "min": min(curve), "every_10": curve[::10]}

    def _merge_config(self, plan: dict[str, Any], plan_path: Path) -> MergeConfiguration:
        """The recipe for mergekit: base, θ₀'s holder and the picked models only, plus the plan."""
        needed = {plan["initial"]}
        for moves in plan["steps"]:
            for move in moves:
                v = move["vertex"]
                needed.update(v.values() if isinstance(v, dict) else [v])
        needed.discard(self.pool.base_ref)
        models = [m for m in self.config.models or () if str(m.model) in needed]
        present = {str(m.model) for m in models}
        models += [InputModelDefinition(model=r) for r in sorted(needed - present)]
        parameters = {**(self.config.parameters or {}), "plan": str(plan_path)}
        return self.config.model_copy(update={"models": models, "parameters": parameters})
