"""AdaMerging (Yang et al., ICLR 2024, arXiv:2310.02575) as a pre-pass, and its coefficient loop,
which fw_soft runs as its inner loop.

The merge is θ = θ₀ + Σ_k c_k τ_k with one coefficient per task vector (``task``) or per task
vector and stored tensor (``layer``, FusionBench's layer-wise), learned by Adam on the entropy of
the merged model's next-token predictions at the targets' prompt positions (no labels).

Memory: the model's parameters are the only copy of θ (θ₀ is never held: every Adam step adds
Σ_k Δc_k τ_k in place), the task vectors are read tensor by tensor when needed (never held whole),
and the coefficients' gradient is taken tensor by tensor as it arrives,
∂L/∂c_k,p = ⟨∂L/∂θ_p, τ_k,p⟩, after which the weight gradient is dropped. The loop holds θ, one
tensor's gradient and K of its task-vector tensors: its peak does not grow with K (peak RSS:
``benchmarks/fw_memory.py --soft``). The in-place updates round differently from the plan's
replay, by about fp32's epsilon per step.
"""

from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions

from mergekit_from import calibration
from mergekit_from.calibration import Encoded, Sample
from mergekit_from.methods.fw_plan import FWPlan, Move
from mergekit_from.prepass.objective import TaskBatches, batch_loss
from mergekit_from.prepass.plot import PLOT_FILE, plot_trace
from mergekit_from.prepass.progress import progress
from mergekit_from.prepass.settings import AdaMergingSettings, AdaSettings
from mergekit_from.prepass.targeted import TargetedPrePass
from mergekit_from.prepass.trace import FWTrace, Iteration, effective_coefficients

PLAN_FILE = "adamerging_plan.json"
Check = Callable[[float, str, dict[str, torch.Tensor]], float]
# τ_k's tensor ``name`` for (k, name), computed from memory-mapped weights each time it is needed.
TaskVector = Callable[[int, str], torch.Tensor]


def _add_scaled(params: dict[str, torch.nn.Parameter], tau: TaskVector, coeffs: torch.Tensor) -> None:
    """θ_p += Σ_k c[k, p] τ_k,p in place (``coeffs`` [K, tensors])."""
    with torch.no_grad():
        for j, (name, p) in enumerate(params.items()):
            for k in range(coeffs.shape[0]):
                c = float(coeffs[k, j])
                if c:
                    p.add_(tau(k, name), alpha=c)


def fit_coefficients(model: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                     tau: TaskVector, coeffs: torch.Tensor, encoded: dict[str, list[Encoded]],
                     s: AdaSettings, pad_id: int, check: Check, where: str, quiet: bool = False) -> dict[str, Any]:
    """Adam on ``coeffs`` ([K] task-wise or [K, tensors] layer-wise, holding their start) with
    ``params`` = θ₀ on entry and θ₀ + Σ c τ on return; returns the loss curve.

    Each step draws ``ada_batch_size`` samples per target and runs them in batches of
    ``batch_size``; the coefficients' gradient accumulates over them, tensor by tensor.
    """
    names = list(params)
    shape = (coeffs.shape[0], len(names))
    per_tensor = lambda c: c.detach().reshape(shape[0], -1).expand(shape)  # noqa: E731
    _add_scaled(params, tau, per_tensor(coeffs))
    grad = torch.zeros(shape, dtype=torch.float64)

    def consume(j: int, p: torch.nn.Parameter) -> None:
        g = p.grad.flatten()
        for k in range(shape[0]):
            grad[k, j] += float(torch.dot(g, tau(k, names[j]).flatten()))
        p.grad = None

    hooks = [p.register_post_accumulate_grad_hook(partial(consume, j)) for j, p in enumerate(params.values())]
    coeffs.requires_grad_(True)
    optimizer = torch.optim.Adam([coeffs], lr=s.ada_lr)
    rng = random.Random(s.seed)
    curve: list[float] = []
    try:
        for step in progress(range(s.ada_iters), "AdaMerging", quiet=quiet):
            grad.zero_()
            total = 0.0
            for items in encoded.values():
                picked = rng.sample(items, min(s.ada_batch_size, len(items)))
                for batch in calibration.batches(picked, s.batch_size, pad_id):
                    loss = batch_loss(model, batch, s.ada_loss) / len(picked)
                    loss.backward()
                    total += loss.item()
            coeffs.grad = grad.sum(1).to(coeffs.dtype) if coeffs.dim() == 1 else grad.to(coeffs.dtype)
            check(total, f"{where}, AdaMerging step {step}", {"coefficients": coeffs.grad})
            before = per_tensor(coeffs).clone()
            optimizer.step()
            if s.ada_clamp:
                with torch.no_grad():
                    coeffs.clamp_(0.0, 1.0)
            _add_scaled(params, tau, per_tensor(coeffs) - before)
            curve.append(total)
    finally:
        for h in hooks:
            h.remove()
        coeffs.requires_grad_(False)
    return {"first": curve[0], "last": curve[-1], "min": min(curve), "every_10": curve[::10]}


class AdaMergingPrePass(TargetedPrePass):
    """AdaMerging over the whole pool from the base; writes a one-step plan θ = base + Σ c (θ_k − base)
    that :mod:`mergekit_from.methods.adamerging` replays."""

    def __init__(self, method: str, config: MergeConfiguration, raw: dict[str, Any], recipe_dir: Path):
        super().__init__(method, AdaMergingSettings, config, raw, recipe_dir)

    def _encoded(self) -> dict[str, list[Encoded]]:
        """Entropy reads the prompts alone; cross-entropy the prompt/response pairs."""
        s = self.settings
        samples = self.samples
        if s.ada_loss == "entropy":
            samples = {t: [Sample(x.prompt) for x in items] for t, items in samples.items()}
        return TaskBatches.of(samples, self.tokenizer, s.max_length, s.batch_size).encoded

    def _task_vector(self, k: int, name: str) -> torch.Tensor:
        """τ_k = θ_k − θ₀ for one tensor, both read from their memory maps (θ₀ was checked finite on loading)."""
        with torch.no_grad():
            return self.pool.tensor(k, name) - self.pool.base.tensor(name).float()

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        s = self.settings
        self.quiet = options.quiet
        torch.manual_seed(s.seed)
        started, cpu = time.perf_counter(), time.process_time()
        model, params = self.base_model()
        encoded = self._encoded()
        batches = TaskBatches(encoded, [list(calibration.batches(e, s.batch_size, self.tokenizer.pad_token_id))
                                        for e in encoded.values()])
        before = self.finite(batches.objective(model, s.ada_loss), "at the base")
        shape = (len(self.pool),) if s.granularity == "task" else (len(self.pool), len(params))
        coeffs = torch.full(shape, float(s.ada_init))
        curve = fit_coefficients(model, params, self._task_vector, coeffs, encoded, s, self.tokenizer.pad_token_id,
                                 self.finite, "from the base", self.quiet)
        names = list(params)
        moves = [Move(float(c[0]) if s.granularity == "task" else dict(zip(names, c.tolist())), ref)
                 for c, ref in zip(coeffs.reshape(len(self.pool), -1), self.pool.refs)]
        plan = FWPlan(self.method, self.pool.base_ref, names, None, [moves])
        plan.write(work_dir / PLAN_FILE)
        trace = FWTrace(self.method, s.model_dump(), self.pool.refs, list(self.samples))
        record = Iteration(0, before, pick_share={r: 1.0 for r in self.pool.refs}, inner_loss=curve,
                           mean_coefficient=[float(c.mean()) for c in coeffs.reshape(len(self.pool), -1)],
                           seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu)
        trace.iterations.append(record)
        trace.final_objective = self.finite(batches.objective(model, s.ada_loss), "after the last step")
        numels = {n: math.prod(shape) for n, shape in self.pool.base.shapes.items()}
        trace.coefficients = effective_coefficients(plan, self.pool.base_ref, lambda name: {}, numels)
        trace.write(out_dir)
        plot_trace(trace, out_dir / PLOT_FILE)
        return self.merge_config(plan, work_dir / PLAN_FILE)
