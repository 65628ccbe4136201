"""Run mergekit YAML recipes with the plugin's methods: early checks, then mergekit's own pipeline.

mergekit validates most things late (after loading models, or deep inside the executor) and
reports them as tracebacks. Everything here runs before any tensor is loaded and raises a
:class:`~mergekit_from.errors.MergekitFromError` whose message names the culprit. The merge
itself is mergekit's ``run_merge`` (planner -> executor -> safetensors), written to a
temporary sibling directory and renamed into place only when it succeeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml
from mergekit import merge_methods
from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration
from mergekit.merge_methods.base import BasePolicy, MergeMethod, ParameterScope
from pydantic import ValidationError

import mergekit_from  # noqa: F401  (registers the plugin's methods)
from mergekit_from.errors import ConfigError, ModelInputError, one_line
from mergekit_from.finite import check_output
from mergekit_from.paths import cache_root
from mergekit_from.weights import TensorIndex


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
    try:
        return MergeConfiguration.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(f"{path}: {one_line(exc)}") from None


def resolve_method(name: str) -> MergeMethod:
    try:
        return merge_methods.get(name)
    except RuntimeError:
        known = ", ".join(sorted(m.spec.name for m in merge_methods.registered_methods()))
        raise ConfigError(f"unknown merge_method {name!r} (registered: {known})") from None


def _parameter_sources(config: MergeConfiguration) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every parameter mapping in a recipe, labelled for error messages."""
    if config.parameters:
        yield "parameters", config.parameters
    for model in config.models or ():
        if model.parameters:
            yield f"models[{model.model}].parameters", model.parameters
    for i, sl in enumerate(config.slices or ()):
        if sl.parameters:
            yield f"slices[{i}].parameters", sl.parameters
        for src in sl.sources:
            if src.parameters:
                yield f"slices[{i}].sources[{src.model}].parameters", src.parameters


def _setting_values(value: Any) -> Iterator[Any]:
    """Concrete values of a mergekit setting: a scalar, a gradient list, or filter entries."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and "value" in item:
                yield from _setting_values(item["value"])
            else:
                yield item
    else:
        yield value


def check_parameters(config: MergeConfiguration, method: MergeMethod) -> None:
    """Validate every value given for the method's parameters, wherever the recipe sets it."""
    specs = {p.name: p for p in method.spec.parameters}
    for where, params in _parameter_sources(config):
        for key, value in params.items():
            spec = specs.get(key)
            if spec is None:
                continue
            for v in _setting_values(value):
                try:
                    spec.validate(v)
                except ValidationError as exc:
                    raise ConfigError(
                        f"{where}: {key}={v!r} is invalid for merge_method "
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


def _absolute(ref: ModelReference) -> ModelReference:
    """Local paths made absolute: mergekit's card generator asks the Hub about any relative
    path without two slashes, which fails (and aborts the merge) on an offline machine."""

    def fix(mp):
        p = Path(mp.path).expanduser()
        return mp.model_copy(update={"path": str(p.resolve())}) if p.exists() and not p.is_absolute() else mp

    return ref.model_copy(update={"model": fix(ref.model), "lora": fix(ref.lora) if ref.lora else None})


def absolutize_paths(config: MergeConfiguration) -> MergeConfiguration:
    update: dict[str, Any] = {}
    if config.base_model is not None:
        update["base_model"] = _absolute(config.base_model)
    if config.models:
        update["models"] = [m.model_copy(update={"model": _absolute(m.model)}) for m in config.models]
    if config.slices:
        update["slices"] = [
            sl.model_copy(update={"sources": [src.model_copy(update={"model": _absolute(src.model)}) for src in sl.sources]})
            for sl in config.slices
        ]
    return config.model_copy(update=update)


def _looks_local(path: str) -> bool:
    """A path the user meant as local; ``org/name`` may be a Hub id and is left to mergekit."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).exists()


def check_models(config: MergeConfiguration) -> None:
    """Local inputs exist, and every local model's tensors have the base's shapes."""
    for ref in _references(config):
        paths = [ref.model.path] + ([ref.lora.path] if ref.lora else [])
        for p in paths:
            if _looks_local(p) and not Path(p).expanduser().exists():
                raise ModelInputError(f"model path not found: {p}")
    base = config.base_model
    if base is None or base.lora or not TensorIndex.is_model_dir(base.model.path):
        return
    base_index = TensorIndex.open(base.model.path)
    for ref in _references(config):
        if ref == base or ref.lora or not TensorIndex.is_model_dir(ref.model.path):
            continue
        base_index.check_compatible(TensorIndex.open(ref.model.path), label=str(ref))


def check_recipe(config: MergeConfiguration) -> MergeMethod:
    """All checks that can run before loading a tensor; returns the resolved method."""
    method = resolve_method(config.merge_method)
    if method.spec.contract.base == BasePolicy.REQUIRED and config.base_model is None:
        raise ConfigError(f"merge_method {config.merge_method!r} needs a base_model")
    check_parameters(config, method)
    check_required(config, method)
    check_models(config)
    return method


@contextlib.contextmanager
def staged_output(out_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder for ``out_path``; move it into place only on success.

    The staging folder has the final name (inside a hidden sibling holder), so whatever the
    writer derives from the folder's name, such as mergekit's card title, is already right.
    """
    out = Path(out_path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp = holder / out.name
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(holder, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_recipe(config_file: str | os.PathLike, out_path: str | os.PathLike, options) -> Path:
    """Check a recipe, then run it through mergekit's ``run_merge`` into ``out_path``.

    A method that needs the whole model (FW-Merging, RegMean) has a ``prepass(config, raw,
    recipe_dir)`` hook: it validates its own settings before anything runs, then its ``run``
    computes inside the staged output (side files such as traces land next to the model) and
    returns the configuration that mergekit merges. ``mergekit_config.yml`` keeps the user's recipe.
    """
    from mergekit.merge import run_merge

    config, source = load_recipe(config_file)
    hook = getattr(resolve_method(config.merge_method), "prepass", None)
    prepass = hook(config, yaml.safe_load(source), Path(config_file).resolve().parent) if hook else None
    if prepass is not None:
        config = prepass.config
    check_recipe(config)
    config = absolutize_paths(config)
    if options.lora_merge_cache is None and any(r.lora for r in _references(config)):
        # mergekit refuses base+lora inputs without a cache dir; give it a standard one.
        options = options.model_copy(update={"lora_merge_cache": str(cache_root() / "lora-merge")})
    with staged_output(out_path) as tmp, tempfile.TemporaryDirectory(prefix=".prepass-", dir=tmp.parent) as work:
        if prepass is not None:
            config = prepass.run(tmp, Path(work), options)
        run_merge(config.model_copy(deep=True), str(tmp), options=options, config_source=source)  # it edits config
        check_output(tmp, config)  # no NaN/Inf is committed, whichever method produced it
        _unlink_card_paths(tmp / "README.md", Path(work))
    return Path(out_path)


def _unlink_card_paths(card: Path, work: Path) -> None:
    """The card lists the merge's inputs; a pre-pass intermediate's folder is deleted after the run."""
    if card.is_file() and str(work) in (text := card.read_text(encoding="utf-8")):
        card.write_text(text.replace(f"{work}{os.sep}", "(intermediate computed by the pre-pass) "), encoding="utf-8")
