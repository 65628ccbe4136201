"""FW-Merging (Chen et al., ICCV 2025, arXiv:2503.12649) as a pre-pass with a streamed pool.

The optimiser follows the official code (hmarkc/FW-Merging, FusionBench ``fw_merging``):

- **hard**: θ₀ = init (task arithmetic λ=0.3, TIES as in the official TIES mode, base, FroM, or a
  given model). Each iteration takes the gradient g of the objective at θ_t, picks a vertex s with
  the LMO, and moves θ ← θ + c_t·D(s − θ) with c_t = step_size·2/(t+2)·scaling_factor, D = identity (task
  arithmetic) or TIES trimming of the single direction.
- **soft**: one gradient per target task, one distinct pick per target, then an AdaMerging inner
  loop (:func:`~mergekit_from.prepass.adamerging.fit_coefficients`, shared with ``adamerging``) learns
  one coefficient per (pick, tensor) with Adam: θ ← θ + Σ_k c_k,p (s_k,p − θ_p).

LMO scores, per stored tensor p and candidate m: the official cosine ⟨g_p, θ_m,p⟩ / (‖g_p‖‖θ_m,p‖)
or the textbook ⟨g_p, θ_m,p − θ_p⟩; ``lmo: model`` sums them over tensors and picks one model,
``lmo: tensor`` picks per tensor.

Unlike the official code, candidates are never all in memory: scoring streams them one tensor
at a time from their memory-mapped safetensors, and an update re-reads the picked vertex tensor
by tensor; soft scores each target's gradient as soon as it is taken (one pass over the pool per
target). Held at any time: the iterate, one gradient and one candidate tensor (soft's inner loop:
the iterate, a copy of it, one tensor's gradient and its K picked tensors), so the peak does not
grow with the pool or with K; pool members ``model+adapter`` are folded per tensor when read. The
result is a *plan* (initial point + moves) that the per-tensor kernel in
:mod:`mergekit_from.methods.fw_merge` replays inside mergekit's executor
(:class:`~mergekit_from.methods.fw_plan.FWPlan`).

Deliberate differences, documented in the README: the same first ``samples_per_task`` samples
are used at every iteration (the official ViT code draws fresh ones); batches are padded rather
than of size 1 (the per-sample mean loss is the same); the initial model is a vertex only with
``initial_vertex: true``; TIES (``update: ties``, ``init: ties``) trims per tensor (FusionBench trims
over the flattened model).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions

from mergekit_from.methods.fw_plan import FWPlan, Move, fw_step
from mergekit_from.prepass.adamerging import fit_coefficients
from mergekit_from.prepass.fw_init import InitialPoint, check_init
from mergekit_from.prepass.lmo import Vertices, lmo_picks, lmo_scores, step_coefficient
from mergekit_from.prepass.objective import TaskBatches, task_objective
from mergekit_from.prepass.plot import PLOT_FILE, plot_trace
from mergekit_from.prepass.progress import progress
from mergekit_from.prepass.recipe_data import set_setting
from mergekit_from.prepass.settings import HardSettings, SoftSettings
from mergekit_from.prepass.targeted import TargetedPrePass
from mergekit_from.prepass.trace import FWTrace, Iteration, PickRecord, effective_coefficients

LOG = logging.getLogger(__name__)

PLAN_FILE = "fw_plan.json"


class FWPrePass(TargetedPrePass):
    """Checks a fw_hard / fw_soft recipe up front; :meth:`run` optimises and returns the config."""

    def __init__(self, method: str, config: MergeConfiguration, raw: dict[str, Any], recipe_dir: Path):
        self.soft = method == "fw_soft"
        super().__init__(method, SoftSettings if self.soft else HardSettings, config, raw, recipe_dir)
        self.init_dir = check_init(self.settings, self.pool, recipe_dir)
        self.inputs += [self.init_dir] if self.init_dir else []

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        super().record(raw, out_dir)
        if self.init_dir is not None:
            set_setting(raw, self.method, "init", str(self.init_dir.resolve()))

    # -- the loop -----------------------------------------------------------------------------

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        s = self.settings
        self.quiet = options.quiet
        torch.manual_seed(s.seed)
        tasks = TaskBatches.of(self.samples, self.tokenizer, s.max_length, s.batch_size)
        model, params = self.base_model()
        start = InitialPoint(s, self.pool, self.init_dir, self.quiet)
        initial_index, initial_ref = start.apply(params, work_dir)
        vertices = Vertices(self.pool, initial_index if s.initial_vertex else None, initial_ref)
        if s.preload_candidates:
            vertices.preloaded = [{n: self.pool.tensor(i, n).clone() for n in params} for i in range(len(self.pool))]

        trace = FWTrace(self.method, s.model_dump(), vertices.refs, list(self.samples))
        plan = FWPlan(self.method, initial_ref, list(params),
                      s.ties_density if not self.soft and s.update == "ties" else None)
        for t in progress(range(s.max_iters), self.method, quiet=self.quiet):
            started, cpu = time.perf_counter(), time.process_time()
            if self.soft:
                record, moves = self._soft_iteration(t, model, params, vertices, tasks)
            else:
                record, moves = self._hard_iteration(t, model, params, vertices, tasks)
            record.seconds, record.cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
            trace.iterations.append(record)
            plan.steps.append(moves)
            LOG.info("%s iter %d: objective %.5f", self.method, t, record.objective)
        trace.final_objective = self.finite(tasks.objective(model, s.objective), "after the last iteration")

        plan.write(work_dir / PLAN_FILE)  # it names θ₀'s temporary folder
        numels = {n: math.prod(shape) for n, shape in self.pool.base.shapes.items()}
        trace.coefficients = effective_coefficients(plan, self.pool.base_ref, start.coefficients, numels)
        trace.write(out_dir)
        plot_trace(trace, out_dir / PLOT_FILE)
        return self.merge_config(plan, work_dir / PLAN_FILE)

    def _gradient(self, model, params, batches, counts, where: str) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        value = task_objective(model, batches, counts, self.settings.objective, backward=True)
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
        return self.finite(value, where, grads), grads

    def _scores(self, vertices: Vertices, params, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return lmo_scores(vertices, params, grads, self.settings.score == "cosine", self.quiet)

    def _hard_iteration(self, t, model, params, vertices: Vertices, tasks: TaskBatches) -> tuple[Iteration, list[Move]]:
        s = self.settings
        where = f"at iteration {t} (targets {', '.join(self.samples)})"
        objective, grads = self._gradient(model, params, tasks.batches, tasks.counts, where)
        picks = lmo_picks(self._scores(vertices, params, grads), list(params), s.lmo)
        model.zero_grad(set_to_none=True)
        del grads
        coef = step_coefficient(t, s.step_size, s.scaling_factor)
        density = s.ties_density if s.update == "ties" else None
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(fw_step(p, [(coef, vertices.tensor(picks[name], name))], density))
        pick = vertices.record(picks, s.lmo)
        record = Iteration(t, objective, step=coef, pick_share=pick.pick_share, picked=pick.picked,
                           picked_by_tensor=pick.picked_by_tensor)
        return record, [Move(coef, vertices.vertex(picks, s.lmo))]

    def _soft_picks(self, t, model, params, vertices: Vertices,
                    tasks: TaskBatches) -> tuple[float, list[dict[str, int]]]:
        """One distinct pick per target (at most one per candidate), and the mean objective. Each
        target's gradient is scored as soon as it is taken, so one gradient is held at a time."""
        objective, chosen = 0.0, []
        for k, task in enumerate(list(self.samples)[: len(vertices.refs)]):
            where = f"at iteration {t} (target {task})"
            value, grads = self._gradient(model, params, [tasks.batches[k]], [tasks.counts[k]], where)
            model.zero_grad(set_to_none=True)
            objective += value / len(tasks.batches)
            scores = self._scores(vertices, params, grads)
            del grads
            chosen.append(lmo_picks(scores, list(params), self.settings.lmo, chosen))
        return objective, chosen

    def _soft_iteration(self, t, model, params, vertices: Vertices, tasks: TaskBatches) -> tuple[Iteration, list[Move]]:
        s = self.settings
        names = list(params)
        objective, chosen = self._soft_picks(t, model, params, vertices, tasks)
        # θ_t is the one copy held beside the model: the task vectors s_k − θ_t are read per tensor.
        theta = {n: p.detach().clone() for n, p in params.items()}

        def tau(k: int, name: str) -> torch.Tensor:
            with torch.no_grad():
                return vertices.tensor(chosen[k][name], name) - theta[name]

        start = s.ada_first_coeff if t == 0 else s.ada_coeff
        coeffs = torch.full((len(chosen), len(names)), float(start))
        losses = fit_coefficients(model, params, tau, coeffs, tasks.encoded, s, self.tokenizer.pad_token_id,
                                  self.finite, f"at iteration {t}", self.quiet)
        moves = [Move(dict(zip(names, coeffs[k].tolist())), vertices.vertex(pick, s.lmo))
                 for k, pick in enumerate(chosen)]
        picked = [vertices.record(pick, s.lmo) for pick in chosen]
        record = Iteration(
            t, objective,
            picks_per_target=dict(zip(list(self.samples)[: len(picked)], picked)),
            pick_share=_summed_share(picked),
            inner_loss=losses,
            mean_coefficient=[float(coeffs[k].mean()) for k in range(len(chosen))],
        )
        return record, moves


def _summed_share(picks: list[PickRecord]) -> dict[str, float]:
    share: dict[str, float] = {}
    for rec in picks:
        for r, v in rec.pick_share.items():
            share[r] = share.get(r, 0.0) + v
    return share
