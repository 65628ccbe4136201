"""RegMean's pre-pass (Jin et al., ICLR 2023): Gram matrices of every linear layer's inputs.

Each pool model runs on its *own* task's calibration data (the recipe maps model -> JSONL);
forward hooks on every ``nn.Linear`` and transformers ``Conv1D`` (GPT-2) whose weight is a stored
tensor accumulate Σ xᵀx over real tokens, and the saved Gram is the running mean per token, as
in the official code (bloomberg/dataless-model-merging ``compute_grams``), except that padding
positions are left out. Models are processed one at a time: at most one model and its Grams
are in memory. The per-tensor kernel in :mod:`mergekit_from.methods.regmean` solves the merge
inside mergekit.

It warns (one line each) about weight matrices that get no Gram (they are averaged) and about
a model whose calibration has fewer tokens than a layer's input width (that layer's Gram is
singular, so the ridge decides the directions its data did not reach); a Gram with NaN/Inf
(activations that overflow) is an error naming model, layer and calibration file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions
from safetensors.torch import save_file

from mergekit_from import calibration
from mergekit_from.errors import ConfigError, TensorValueError
from mergekit_from.finite import is_finite
from mergekit_from.methods.regmean import GramsIndex
from mergekit_from.prepass.objective import load_skeleton, stored_names
from mergekit_from.prepass.pool import Pool, ref_string
from mergekit_from.prepass.progress import progress
from mergekit_from.prepass.recipe_data import copy_data, resolve_path, set_setting
from mergekit_from.prepass.settings import RegMeanSettings, read_settings
from mergekit_from.weights import SINGLE

LOG = logging.getLogger(__name__)

GRAMS_DIR = "regmean_grams"
GRAMS_INDEX = "grams.json"


def gram_modules(model: torch.nn.Module, stored: set[str]) -> dict[str, torch.nn.Module]:
    """Stored weight name -> its ``nn.Linear`` or ``Conv1D`` module (the layers RegMean solves)."""
    from transformers.pytorch_utils import Conv1D

    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and f"{name}.weight" in stored
    }


class GramAccumulator:
    """Forward hooks that keep Σ xᵀx and the token count per linear layer."""

    def __init__(self, model: torch.nn.Module, stored: set[str]):
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.mask: torch.Tensor | None = None  # [B, L] real-token mask of the current batch
        self.handles = [m.register_forward_hook(self._hook(key)) for key, m in gram_modules(model, stored).items()]

    def _hook(self, key: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().float()
            x = x[self.mask.bool()] if self.mask is not None else x.reshape(-1, x.shape[-1])
            gram = x.T @ x
            if key in self.sums:
                self.sums[key].add_(gram)
            else:
                self.sums[key] = gram
            self.tokens[key] = self.tokens.get(key, 0) + x.shape[0]

        return hook

    def means(self) -> dict[str, torch.Tensor]:
        for h in self.handles:
            h.remove()
        return {k: (s / max(self.tokens[k], 1)).contiguous() for k, s in self.sums.items()}


def accumulate(model: torch.nn.Module, stored: set[str], batches) -> GramAccumulator:
    acc = GramAccumulator(model, stored)
    with torch.no_grad():
        for batch in batches:
            acc.mask = batch.attention_mask
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return acc


def model_grams(model: torch.nn.Module, stored: set[str], batches) -> dict[str, torch.Tensor]:
    return accumulate(model, stored, batches).means()


def warn_without_gram(model: torch.nn.Module, stored: set[str], grams: dict[str, torch.Tensor]) -> None:
    """One line naming the module kinds whose stored weight matrices get no Gram (averaged instead)."""
    missing: dict[str, str] = {}
    for name, module in model.named_modules():
        key = f"{name}.weight"
        weight = module._parameters.get("weight")
        if weight is None or weight.ndim < 2 or key not in stored or key in grams:
            continue
        if not isinstance(module, torch.nn.Embedding):  # embeddings are averaged, as officially
            missing.setdefault(type(module).__name__, key)
    if missing:
        kinds = ", ".join(f"{kind} (e.g. {key})" for kind, key in missing.items())
        LOG.warning("regmean: no Gram for the weights of %s; they are averaged instead", kinds)


def check_grams(ref: str, file: Path, acc: GramAccumulator, grams: dict[str, torch.Tensor]) -> None:
    """Refuse overflowed Grams; warn (one line) when a layer saw fewer tokens than its input width."""
    for key, gram in grams.items():
        if not is_finite(gram):
            raise TensorValueError(
                f"regmean: the Gram of {key!r} for pool model {ref!r} has NaN/Inf values: its activations "
                f"overflow on {file} (check the model's weights)"
            )
    short = [key for key, gram in grams.items() if acc.tokens[key] < gram.shape[0]]
    if short:
        widest = max(short, key=lambda k: grams[k].shape[0])
        LOG.warning(
            "regmean: pool model %s saw %d calibration tokens, fewer than the input width of %d layer(s) "
            "(e.g. %s, width %d): their Grams are singular and the ridge decides the merge there; "
            "give more calibration samples", ref, acc.tokens[widest], len(short), widest, grams[widest].shape[0],
        )


class RegMeanPrePass:
    def __init__(self, config: MergeConfiguration, raw: dict[str, Any], recipe_dir: Path):
        self.settings = read_settings(RegMeanSettings, raw, config, section="regmean")
        self.pool = Pool.from_config(config, "regmean", self.settings.skip_incompatible)
        self.config = self.pool.without_skipped(config)
        self.files = self._calibration_files(recipe_dir)
        self.samples = calibration.load_tasks(self.files, self.settings.samples_per_task)
        self.tokenizer_dir = None
        if self.settings.tokenizer:
            self.tokenizer_dir = resolve_path(self.settings.tokenizer, recipe_dir, "tokenizer folder not found",
                                              Path.is_dir)
        self.tokenizer = calibration.load_tokenizer(self.tokenizer_dir or self.pool.base.root,
                                                    self.settings.trust_remote_code)
        self.inputs = [*self.files.values(), *filter(None, [self.tokenizer_dir])]

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        """One ``regmean.calibration`` mapping from each model's (absolute) reference to its copied file."""
        copies = copy_data([(Path(ref).name, f) for ref, f in self.files.items()], out_dir)
        for m in raw.get("models") or ():
            if isinstance(m, dict) and isinstance(m.get("parameters"), dict):
                m["parameters"].pop("calibration", None)
        (raw.get("parameters") or {}).pop("calibration", None)
        set_setting(raw, "regmean", "calibration", dict(zip(self.files, copies)))
        if self.tokenizer_dir is not None:
            set_setting(raw, "regmean", "tokenizer", str(self.tokenizer_dir.resolve()))

    def _calibration_files(self, recipe_dir: Path) -> dict[str, Path]:
        """Pool model reference -> its JSONL, from the section's mapping or per-model parameters."""
        given = {ref_string(k): v for k, v in self.settings.calibration.items()}
        for m in self.config.models or ():
            value = (m.parameters or {}).get("calibration")
            if value is not None:
                if not isinstance(value, str):
                    raise ConfigError(f"models[{m.model}].parameters.calibration must be a file path")
                given.setdefault(str(m.model), value)
        unknown = sorted(set(given) - set(self.pool.refs) - set(self.pool.skipped))
        if unknown:
            raise ConfigError(f"regmean calibration: {unknown[0]!r} is not a pool model")
        files = {}
        for ref in self.pool.refs:
            if ref not in given:
                raise ConfigError(f"regmean: pool model {ref} has no calibration data (map it in regmean.calibration)")
            files[ref] = resolve_path(given[ref], recipe_dir, "calibration file not found")
        return files

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        s = self.settings
        grams_dir = work_dir / GRAMS_DIR
        grams_dir.mkdir(parents=True)
        files = {}
        conv1d: list[str] = []
        for i, ref in enumerate(progress(self.pool.refs, "RegMean Grams", quiet=options.quiet)):
            encoded = calibration.encode(self.samples[ref], self.tokenizer, s.max_length)
            model = load_skeleton(Path(self.pool.indexes[i].root), s.trust_remote_code, role="pool model")
            stored = set(stored_names(model, self.pool.base))  # parameter names, as mergekit writes them
            acc = accumulate(model, stored, calibration.batches(encoded, s.batch_size, self.tokenizer.pad_token_id))
            grams = acc.means()
            check_grams(ref, self.files[ref], acc, grams)
            if i == 0:  # every pool model has the base's architecture
                warn_without_gram(model, stored, grams)
                conv1d = [k for k, m in gram_modules(model, stored).items() if not isinstance(m, torch.nn.Linear)]
            del model, acc
            folder = grams_dir / str(i)  # a TensorIndex-readable folder per model
            folder.mkdir()
            save_file(grams, str(folder / SINGLE))
            files[ref] = str(folder)
            del grams
        index = grams_dir / GRAMS_INDEX
        GramsIndex(s.alpha, s.ridge, conv1d, files).write(index)
        parameters = {**(self.config.parameters or {}), "grams": str(index)}
        return self.config.model_copy(update={"parameters": parameters})
