"""Which merge methods have a pre-pass: method name -> settings model and factory.

``mergekit-from yaml`` starts a method's pre-pass through :func:`start_prepass` after checking the
recipe's keys (against :func:`settings_model`) and its base model; ``mergekit-from methods`` lists
the settings. A new pre-pass method adds one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Protocol

from mergekit.config import MergeConfiguration
from mergekit.options import MergeOptions

from mergekit_from.methods import adamerging, fw_hard, fw_soft, regmean
from mergekit_from.prepass.adamerging import AdaMergingPrePass
from mergekit_from.prepass.fw import FWPrePass
from mergekit_from.prepass.regmean import RegMeanPrePass
from mergekit_from.prepass.settings import (
    AdaMergingSettings,
    HardSettings,
    PrePassSettings,
    RegMeanSettings,
    SoftSettings,
)


class PrePass(Protocol):
    """What a merge method's pre-pass hands to :func:`mergekit_from.recipe.run_recipe`."""

    config: MergeConfiguration  # the recipe as checked (e.g. without skipped pool models)
    inputs: list[Path]  # what it reads besides the models: data files, init model, tokenizer

    def record(self, raw: dict[str, Any], out_dir: Path) -> None:
        """Make the recipe ``raw`` re-run from anywhere: copy the data into ``out_dir``, point the
        settings at the copies (relative to ``out_dir``) and make other paths absolute."""

    def run(self, out_dir: Path, work_dir: Path, options: MergeOptions) -> MergeConfiguration:
        """Compute, write side files into ``out_dir`` / ``work_dir``; return the config to merge."""


PrePassFactory = Callable[[MergeConfiguration, dict[str, Any], Path], PrePass]


@dataclass(frozen=True)
class PrePassEntry:
    settings: type[PrePassSettings]
    factory: PrePassFactory  # (checked config, raw recipe, recipe folder) -> pre-pass


PREPASSES: dict[str, PrePassEntry] = {
    fw_hard.spec.name: PrePassEntry(HardSettings, partial(FWPrePass, fw_hard.spec.name)),
    fw_soft.spec.name: PrePassEntry(SoftSettings, partial(FWPrePass, fw_soft.spec.name)),
    adamerging.spec.name: PrePassEntry(AdaMergingSettings, partial(AdaMergingPrePass, adamerging.spec.name)),
    regmean.spec.name: PrePassEntry(RegMeanSettings, RegMeanPrePass),
}


def settings_model(method: str) -> type[PrePassSettings] | None:
    """The settings a recipe may give ``method``'s pre-pass (None: the method has none)."""
    entry = PREPASSES.get(method)
    return entry.settings if entry else None


def start_prepass(method: str, config: MergeConfiguration, raw: dict[str, Any], recipe_dir: Path) -> PrePass | None:
    """``method``'s pre-pass for a recipe whose parameters and base model were checked; it reads
    and validates its own settings and data now and computes nothing until ``run``."""
    entry = PREPASSES.get(method)
    return entry.factory(config, raw, recipe_dir) if entry else None
