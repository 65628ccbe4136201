"""The settings of the pre-pass methods, read from a recipe into pydantic models.

A recipe gives them in a section named after the method or in top-level ``parameters:``; every
field's description is what ``mergekit-from methods`` lists.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar, Union

from mergekit.config import MergeConfiguration
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mergekit_from.errors import ConfigError, one_line
from mergekit_from.methods.from_merge import DEFAULT_K

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1)]

INIT_KEYWORDS = ("task_arithmetic", "ties", "base", "from")
_INIT_HELP = ("θ₀: task_arithmetic (λ = init_lambda) | ties (TIES, ties_density kept, sign election, sum, "
              "λ = init_lambda: the official TIES mode) | base | from (FroM, k = from_k) | a model folder")


class PrePassSettings(BaseModel):
    """What every pre-pass reads the same way: its calibration samples, the pool, the tokenizer."""

    model_config = ConfigDict(extra="forbid")
    per_model: ClassVar[tuple[str, ...]] = ()  # settings also accepted in models[].parameters

    samples_per_task: PositiveInt = Field(100, description="first lines of each calibration file used (official: 100)")
    max_length: PositiveInt = Field(256, description="tokenisation cut-off of the calibration samples")
    batch_size: PositiveInt = Field(8, description="padded batch size of the forward passes")
    skip_incompatible: bool = Field(
        False, description="leave out pool models whose layout differs from the base (warns)"
    )
    tokenizer: Optional[str] = Field(None, description="folder to load the tokenizer from (default: the base)")
    trust_remote_code: bool = Field(False, description="run the model's own code when loading it and its tokenizer")


S = TypeVar("S", bound=PrePassSettings)


def read_settings(model: type[S], raw: dict[str, Any], config: MergeConfiguration, section: str) -> S:
    """Settings from top-level ``parameters:`` (keys the model knows) and the ``section:`` mapping.

    A key given in both places is an error rather than a silent precedence rule.
    """
    values: dict[str, Any] = {k: v for k, v in (config.parameters or {}).items() if k in model.model_fields}
    extra = raw.get(section)
    if extra is not None:
        if not isinstance(extra, dict):
            raise ConfigError(f"recipe section {section!r} must be a mapping")
        both = sorted(set(values) & set(extra))
        if both:
            raise ConfigError(f"setting {both[0]!r} is given both in parameters: and in {section}:")
        values.update(extra)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{section} settings: {one_line(exc)}") from None


class TargetedSettings(PrePassSettings):
    """What every pre-pass fitted to target tasks' calibration data reads the same way."""

    targets: Union[dict[str, str], list[str]] = Field(
        description="the tasks the merge is for: {task: JSONL file} or a list of files (task = file stem)"
    )
    seed: int = Field(0, description="seed of the random draws (torch, AdaMerging's batches)")


class AdaSettings(TargetedSettings):
    """AdaMerging's inner loop: Adam on the coefficients of task vectors (defaults: the AdaMerging paper)."""

    ada_iters: PositiveInt = Field(100, description="Adam steps of the AdaMerging loop")
    ada_lr: PositiveFloat = Field(1e-3, description="Adam's learning rate (AdaMerging paper: 1e-3)")
    ada_batch_size: PositiveInt = Field(16, description="samples drawn per target for each Adam step")
    ada_loss: Literal["entropy", "cross_entropy"] = Field(
        "entropy", description="loss: entropy of next-token predictions on prompts (AdaMerging, label-free) | "
        "cross_entropy on responses"
    )
    ada_clamp: bool = Field(
        False, description="project the coefficients onto [0, 1] after each step (AdaMerging's code clamps them in "
        "the forward pass; FusionBench's configs do not clamp)"
    )


class FWSettings(TargetedSettings):
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

    max_iters: PositiveInt = Field(10, description="Frank-Wolfe iterations")
    init: str = Field("task_arithmetic", description=_INIT_HELP)
    init_lambda: PositiveFloat = Field(0.3, description="λ for init: task_arithmetic | ties")
    from_k: Annotated[float, Field(ge=0)] = Field(DEFAULT_K, description="FroM's k for init: from")
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
    ties_density: Fraction = Field(
        0.2, description="share of each task vector's entries TIES keeps, per tensor (init: ties, update: ties)"
    )
    preload_candidates: bool = Field(
        False, description="hold every candidate in RAM like the official code (benchmarks only)"
    )


class HardSettings(FWSettings):
    """fw_hard: the step θ ← θ + c_t·D(s − θ) with c_t = step_size·2/(t+2)·scaling_factor."""

    step_size: PositiveFloat = Field(0.1, description="step size of c_t = step_size·2/(t+2)·scaling_factor")
    scaling_factor: PositiveFloat = Field(0.3, description="task arithmetic's scale in c_t")
    update: Literal["task_arithmetic", "ties"] = Field(
        "task_arithmetic", description="direction D: task_arithmetic (s − θ) | ties (s − θ, ties_density kept)"
    )


class SoftSettings(FWSettings, AdaSettings):
    """fw_soft: per iteration, one pick per target, then AdaMerging learns their coefficients."""

    # Measured on the task zoo (README "Which FW variant"; benchmarks/quality.py DataDefaults): the paper's
    # entropy loss, lr 1e-3 and 500 steps left the merge near, or worse than, the base.
    init: str = Field("base", description=_INIT_HELP)
    max_iters: PositiveInt = Field(3, description="Frank-Wolfe iterations")
    ada_lr: PositiveFloat = Field(1e-2, description=AdaSettings.model_fields["ada_lr"].description)
    ada_coeff: float = Field(1e-2, description="starting coefficient of each pick after the first iteration")
    ada_first_coeff: float = Field(0.3, description="starting coefficient of each pick at the first iteration")
    ada_loss: Literal["entropy", "cross_entropy"] = Field(
        "cross_entropy", description=AdaSettings.model_fields["ada_loss"].description
    )


class AdaMergingSettings(AdaSettings):
    """AdaMerging (Yang et al., ICLR 2024): θ = base + Σ_k λ_k τ_k with the λ learned by Adam on the
    entropy of the merged model's predictions on the targets' prompts (no labels)::

        merge_method: adamerging
        base_model: ./base
        models: [{model: ./expert_rev}, {model: ./expert_sort}]
        adamerging:
          targets: {rev: data/rev.jsonl, sort: data/sort.jsonl}   # prompts only are read
          granularity: layer
    """

    granularity: Literal["task", "layer"] = Field(
        "layer", description="task: one coefficient per model | layer: one per model and stored tensor (FusionBench)"
    )
    ada_init: float = Field(0.3, description="starting coefficient of every task vector (AdaMerging's prior)")


class RegMeanSettings(PrePassSettings):
    """Recipe section ``regmean:`` (or top-level ``parameters:`` for scalars); each field's
    description says what it does (``mergekit-from methods`` lists them)::

        merge_method: regmean
        base_model: ./base
        models:
          - model: ./expert_rev
            parameters: {calibration: data/rev.jsonl}   # or regmean.calibration below
          - model: ./expert_sort
        regmean:
          calibration: {./expert_sort: data/sort.jsonl}
          alpha: 0.9
          ridge: 0.1          # scale-aware ridge (0 = the official solve); see methods/regmean.py
    """

    per_model: ClassVar[tuple[str, ...]] = ("calibration",)  # also accepted in models[].parameters

    calibration: dict[str, str] = Field(
        default_factory=dict,
        description="pool model -> its task's JSONL (or models[].parameters.calibration: the file)",
    )
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        0.9, description="off-diagonal shrink of the Grams (1 = none); official configs use 0.1-0.9"
    )
    ridge: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        0.1, description="ridge added to each Gram, relative to their mean diagonal (0 = official RegMean); "
                         "0.1 merged SmolLM2-135M's experts, where 0.01 and 0.001 were refused (README)"
    )
