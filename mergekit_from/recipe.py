"""Run mergekit YAML recipes with the plugin's methods: early checks, then mergekit's own pipeline.

mergekit validates most things late (after loading models, or deep inside the executor) and
reports them as tracebacks. Everything here runs before any tensor is loaded and raises a
:class:`~mergekit_from.errors.MergekitFromError` whose message names the culprit. The merge
itself is mergekit's ``run_merge`` (planner -> executor -> safetensors), written to a
staging folder and moved into place only when it succeeded (see :mod:`mergekit_from.output`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml
from mergekit import merge_methods
from mergekit.common import ModelReference
from mergekit.config import ConditionalParameter, MergeConfiguration, ParameterSetting
from mergekit.merge_methods.base import BasePolicy, MergeMethod, ParameterScope
from mergekit.options import MergeOptions
from pydantic import ValidationError

import mergekit_from  # noqa: F401  (registers the plugin's methods)
from db.paths import cache_root
from mergekit_from.errors import ConfigError, ModelInputError, one_line
from mergekit_from.finite import check_output
from mergekit_from.lora import folded_adapters
from mergekit_from.methods.side_file import user_parameters
from mergekit_from.output import Output
from mergekit_from.prepass.pool import absolute_reference, ref_string
from mergekit_from.prepass.registry import PrePass, settings_model, start_prepass
from mergekit_from.registry import is_plugin_method
from mergekit_from.weights import TensorIndex, refuse_pickles, weight_files_state


def load_recipe(path: str | os.PathLike) -> tuple[MergeConfiguration, str]:
    """Parse and validate a recipe file; returns the configuration and its source text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    source = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    for key in ("models", "slices"):
        if data.get(key) == []:
            raise ConfigError(f"{path}: `{key}:` is empty; list at least one entry")
    try:
        return MergeConfiguration.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(f"{path}: {one_line(exc)}") from None
    except RuntimeError as exc:  # mergekit's own validators ("Exactly one of 'models', 'slices'...")
        raise ConfigError(f"{path}: {exc}") from None


def resolve_method(name: str) -> MergeMethod:
    try:
        return merge_methods.get(name)
    except RuntimeError:
        known = ", ".join(sorted(m.spec.name for m in merge_methods.registered_methods()))
        raise ConfigError(f"unknown merge_method {name!r} (registered: {known})") from None


def _parameter_sources(config: MergeConfiguration) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every parameter mapping in a recipe: its label for error messages, its level
    (``top``, ``slice`` or ``model``) and the mapping."""
    if config.parameters:
        yield "parameters", "top", config.parameters
    for model in config.models or ():
        if model.parameters:
            yield f"models[{model.model}].parameters", "model", model.parameters
    for i, sl in enumerate(config.slices or ()):
        if sl.parameters:
            yield f"slices[{i}].parameters", "slice", sl.parameters
        for src in sl.sources:
            if src.parameters:
                yield f"slices[{i}].sources[{src.model}].parameters", "model", src.parameters


def _setting_values(setting: ParameterSetting, label: str = "") -> Iterator[tuple[Any, str]]:
    """The values a mergekit setting can resolve to, as ``evaluate_setting`` reads it (a scalar,
    a gradient's endpoints, each filter's value), each with its filter for error messages.
    Checking a gradient's endpoints suffices: the bounds a parameter type has are convex."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if not isinstance(setting, list):
        yield setting, label
        return
    for item in setting:
        if isinstance(item, ConditionalParameter):
            matches_all = item.filter in (None, "*")
            yield from _setting_values(item.value, label if matches_all else f" (filter {item.filter!r})")
        else:
            yield item, label


def _accepted_keys(method: MergeMethod) -> dict[str, list[str]]:
    """The keys a recipe may give one of the plugin's methods, per level: its parameters
    (per-model ones also on models and sources) and, at the top, its pre-pass settings."""
    params = user_parameters(method.spec)
    per_input = [p.name for p in params if p.scope != ParameterScope.SHARED]
    settings = settings_model(method.spec.name)
    return {
        "top": [p.name for p in params] + list(settings.model_fields if settings else ()),
        "slice": [p.name for p in params],
        "model": per_input + list(getattr(settings, "per_model", ())),
    }


def _check_key(key: str, where: str, level: str, method: MergeMethod, accepted: dict[str, list[str]]) -> None:
    """mergekit ignores keys its methods do not take; for the plugin's methods a key that does
    nothing is a typo or a misplaced setting, and an error."""
    if key in accepted[level]:
        return
    name = method.spec.name
    here = ", ".join(accepted[level]) or "none"
    if key in accepted["top"]:
        raise ConfigError(f"{where}: {key!r} of merge_method {name!r} belongs in the top-level parameters: "
                          f"(accepted here: {here})")
    close = difflib.get_close_matches(key, accepted[level], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: unknown parameter {key!r} for merge_method {name!r} (accepted: {here}){hint}")


def check_parameters(config: MergeConfiguration, method: MergeMethod) -> None:
    """Every key the recipe gives the plugin's methods is one they take, and every value given
    for a method's parameters (filters and gradients included) is valid."""
    specs = {p.name: p for p in method.spec.parameters}
    accepted = _accepted_keys(method) if is_plugin_method(method.spec.name) else None
    for where, level, params in _parameter_sources(config):
        for key, setting in params.items():
            if accepted is not None:
                _check_key(key, where, level, method, accepted)
            spec = specs.get(key)
            if spec is None or (level == "model" and spec.scope == ParameterScope.SHARED):
                continue  # mergekit never reads it
            for value, label in _setting_values(setting):
                try:
                    spec.validate(value)
                except ValidationError as exc:
                    raise ConfigError(
                        f"{where}: {key}={value!r}{label} is invalid for merge_method "
                        f"{method.spec.name!r}: {one_line(exc)}"
                    ) from None


def check_required(config: MergeConfiguration, method: MergeMethod) -> None:
    """Required parameters are set, for every model that needs them (``models:`` recipes;
    mergekit would otherwise stop half-way through the merge)."""
    top = config.parameters or {}
    name = method.spec.name
    for spec in method.spec.parameters:
        if not spec.required or spec.name in top:
            continue
        if spec.scope == ParameterScope.SHARED:
            if not config.slices:
                raise ConfigError(f"merge_method {name!r} needs parameter {spec.name!r}")
            continue
        for model in config.models or ():
            is_base = config.base_model is not None and model.model == config.base_model
            if spec.name not in (model.parameters or {}) and not (is_base and spec.scope == ParameterScope.NON_BASE):
                raise ConfigError(f"models[{model.model}]: merge_method {name!r} needs parameter {spec.name!r}")


def _references(config: MergeConfiguration) -> list[ModelReference]:
    refs: list[ModelReference] = []
    if config.base_model is not None:
        refs.append(config.base_model)
    for model in config.models or ():
        refs.append(model.model)
    for sl in config.slices or ():
        refs.extend(src.model for src in sl.sources)
    return list(dict.fromkeys(refs))


def default_lora_cache(config: MergeConfiguration) -> Path:
    """Where mergekit caches the recipe's base+adapter inputs merged, keyed by their weight files as they are now.
    mergekit names a merged copy by the base's and adapter's paths only: in one shared folder, an adapter retrained
    in place would be merged from its stale copy. (A ``--lora-merge-cache`` the user gives is used as it is.)"""
    state = [[path, weight_files_state(path)] for ref in _references(config) if ref.lora
             for path in (ref.model.path, ref.lora.path)]
    return cache_root() / "lora-merge" / hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def absolutize_paths(config: MergeConfiguration) -> MergeConfiguration:
    update: dict[str, Any] = {}
    if config.base_model is not None:
        update["base_model"] = absolute_reference(config.base_model)
    if config.models:
        update["models"] = [m.model_copy(update={"model": absolute_reference(m.model)}) for m in config.models]
    if config.slices:
        update["slices"] = [
            sl.model_copy(update={"sources": [src.model_copy(update={"model": absolute_reference(src.model)}) for src in sl.sources]})
            for sl in config.slices
        ]
    return config.model_copy(update=update)


def _looks_local(path: str) -> bool:
    """A path the user meant as local; ``org/name`` may be a Hub id and is left to mergekit."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).exists()


def _input_key(ref: ModelReference) -> tuple:
    """What a reference reads: local paths resolved, so `./a` and `a` are the same input."""

    def where(mp) -> str:
        p = Path(mp.path).expanduser()
        return str(p.resolve()) if p.exists() else mp.path

    return where(ref.model), ref.model.revision, ref.lora and (where(ref.lora), ref.lora.revision)


def check_distinct(config: MergeConfiguration) -> None:
    """No input listed twice among ``models:`` or within one slice (mergekit stops mid-plan)."""
    groups = [("models", [m.model for m in config.models or ()])]
    groups += [(f"slices[{i}].sources", [s.model for s in sl.sources]) for i, sl in enumerate(config.slices or ())]
    for where, refs in groups:
        seen: set[tuple] = set()
        for ref in refs:
            key = _input_key(ref)
            if key in seen:
                raise ConfigError(f"{where}: {ref} is listed twice; each input may appear once")
            seen.add(key)


def check_models(config: MergeConfiguration, allow_pickle: bool = False) -> None:
    """Local inputs exist, hold no pickles (unless allowed) and appear once; every local model's
    tensors have the base's shapes, and its vocabulary size unless the recipe aligns tokenizers."""
    for ref in _references(config):
        paths = [ref.model.path] + ([ref.lora.path] if ref.lora else [])
        for p in paths:
            if _looks_local(p) and not Path(p).expanduser().exists():
                raise ModelInputError(f"model path not found: {p}")
            if not allow_pickle:
                refuse_pickles(p)
    check_distinct(config)
    indexes = {r: TensorIndex.open(r.model.path) for r in _references(config)
               if not r.lora and TensorIndex.is_model_dir(r.model.path)}
    base = config.base_model
    if base in indexes:
        for ref, index in indexes.items():
            if ref != base:
                indexes[base].check_compatible(index, label=str(ref))
    if indexes and config.models and config.tokenizer is None and config.tokenizer_source is None:
        first, *rest = indexes  # the base when it is local: _references lists it first
        label = "the base" if first == base else repr(str(first))
        for ref in rest:
            indexes[first].check_same_vocab(indexes[ref], label=str(ref), reference=label)


def check_base(config: MergeConfiguration, method: MergeMethod) -> None:
    """A method that needs a base model has one (checked before a pre-pass builds its pool)."""
    if method.spec.contract.base == BasePolicy.REQUIRED and config.base_model is None:
        raise ConfigError(f"merge_method {config.merge_method!r} needs a base_model")


def check_recipe(config: MergeConfiguration, allow_pickle: bool = False) -> MergeMethod:
    """The checks that can run before loading a tensor, after :func:`check_parameters`,
    :func:`check_base` and a pre-pass's own (which may leave models out); returns the resolved method."""
    method = resolve_method(config.merge_method)
    check_required(config, method)
    check_models(config, allow_pickle)
    return method


@dataclass
class CheckedRecipe:
    """A recipe that passed every check, ready to merge into a folder."""

    config: MergeConfiguration
    source: str
    raw: dict[str, Any]
    prepass: PrePass | None
    options: MergeOptions
    inputs: list[Path]  # every local path the run reads: an output folder must not contain them


def check_recipe_file(config_file: str | os.PathLike, options: MergeOptions,
                      allow_pickle: bool = False) -> CheckedRecipe:
    """Load and check a recipe, its pre-pass settings and its local inputs; nothing is computed.

    A method that needs the whole model (FW-Merging, RegMean) has a pre-pass in
    :mod:`mergekit_from.prepass.registry`: it validates its own settings here; its ``run``
    computes later, inside the output (side files such as traces land next to the model).
    """
    config, source = load_recipe(config_file)
    config = absolutize_paths(config)  # models resolve against the working directory, as in mergekit
    raw = yaml.safe_load(source)
    method = resolve_method(config.merge_method)
    check_parameters(config, method)  # before a pre-pass reads its settings and data
    check_base(config, method)
    prepass = start_prepass(method.spec.name, config, raw, Path(config_file).resolve().parent)
    if prepass is not None:
        config = prepass.config
    check_recipe(config, allow_pickle)
    if options.lora_merge_cache is None and any(r.lora for r in _references(config)):
        # mergekit refuses base+lora inputs without a cache dir; give it a standard one.
        options = options.model_copy(update={"lora_merge_cache": str(default_lora_cache(config))})
    models = [Path(p) for ref in _references(config) for p in (ref.model.path, ref.lora and ref.lora.path) if p]
    inputs = [Path(config_file), *models, *(prepass.inputs if prepass else ())]
    return CheckedRecipe(config, source, raw, prepass, options, inputs)


def merge_into(recipe: CheckedRecipe, folder: Path) -> None:
    """Run the pre-pass (if any) and mergekit's ``run_merge`` into ``folder``."""
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge

    # mergekit keeps one loader per model reference for the life of the process: a model or adapter rewritten since
    # an earlier merge in this process (a benchmark, a notebook) would be read from its old file
    LoaderCache().loaders.clear()
    config = recipe.config
    with tempfile.TemporaryDirectory(prefix=".prepass-", dir=folder.parent) as work:
        if recipe.prepass is not None:
            config = recipe.prepass.run(folder, Path(work), recipe.options)
        source = recorded_source(recipe, folder)
        # A pre-pass method reads adapters folded per tensor; other methods keep mergekit's own LoRA merge.
        with folded_adapters(config) if recipe.prepass is not None else nullcontext():
            run_merge(config.model_copy(deep=True), str(folder), options=recipe.options, config_source=source)  # it edits config
        check_output(folder, config)  # no NaN/Inf is committed, whichever method produced it
        _unlink_card_paths(folder / "README.md", Path(work))


def run_recipe(config_file: str | os.PathLike, out_path: str | os.PathLike, options: MergeOptions,
               overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Check a recipe and its output folder, then merge (mergekit's ``run_merge``) into the folder."""
    recipe = check_recipe_file(config_file, options, allow_pickle)
    output = Output.check(out_path, "yaml", recipe.inputs, overwrite)
    with output.staged() as tmp:
        merge_into(recipe, tmp)
    return Path(out_path)


def recorded_source(recipe: CheckedRecipe, folder: Path) -> str:
    """The recipe to record as ``mergekit_config.yml``: one that re-runs from any folder.

    Local model paths become absolute (mergekit resolves models against the working directory)
    and a pre-pass copies its data into ``folder``, relative to which the recorded recipe names
    it. A recipe that already re-runs anywhere is recorded as written.
    """
    raw = copy.deepcopy(recipe.raw)
    if isinstance(raw.get("base_model"), str):
        raw["base_model"] = ref_string(raw["base_model"])
    entries = [*(raw.get("models") or ()), *(src for sl in raw.get("slices") or () for src in sl.get("sources") or ())]
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("model"), str):
            entry["model"] = ref_string(entry["model"])
    if recipe.prepass is not None:
        recipe.prepass.record(raw, folder)
    if raw == recipe.raw:
        return recipe.source
    lead = "".join(itertools.takewhile(lambda line: line.startswith("#"), recipe.source.splitlines(True)))
    note = "# Recorded by mergekit-from: model paths made absolute, data copied next to this file.\n"
    return lead + note + yaml.safe_dump(raw, sort_keys=False)


def _unlink_card_paths(card: Path, work: Path) -> None:
    """The card lists the merge's inputs; a pre-pass intermediate's folder is deleted after the run."""
    if card.is_file() and str(work) in (text := card.read_text(encoding="utf-8")):
        card.write_text(text.replace(f"{work}{os.sep}", "(intermediate computed by the pre-pass) "), encoding="utf-8")
