"""A PEFT LoRA adapter as names and numbers, without tensors: file names, module naming and scale.

PEFT saves module ``M``'s factors as ``M.lora_A.weight`` (r x in) and ``M.lora_B.weight`` (out x r),
``M`` carrying PEFT's own prefixes (``base_model.model.``); its task vector is ``scale * B @ A``
with ``scale = alpha / r``, or ``alpha / sqrt(r)`` under rsLoRA, where ``rank_pattern`` and
``alpha_pattern`` override ``r`` and ``lora_alpha`` per module. Tensor math stays with the callers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Literal

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")

Part = Literal["A", "B"]


def split_key(key: str) -> tuple[str, Part] | None:
    """``M.lora_A.weight`` -> (``M``, "A"); None for a tensor that is not a LoRA factor."""
    m = _KEY.match(key)
    return (m["module"], m["part"]) if m else None  # type: ignore[return-value]


def factor_key(module: str, part: Part) -> str:
    return f"{module}.lora_{part}.weight"


def base_weight_name(module: str, names: Container[str]) -> str | None:
    """The base's weight that ``module`` adapts: ``base_model.model.model.layers.0.q_proj`` ->
    ``model.layers.0.q_proj.weight``, dropping leading components until the base has the name."""
    candidate = module
    while True:
        if f"{candidate}.weight" in names:
            return f"{candidate}.weight"
        if "." not in candidate:
            return None
        candidate = candidate.split(".", 1)[1]


def _pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's per-module override: the last pattern matching a suffix of the module name wins."""
    value = default
    for pattern, override in (patterns or {}).items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            value = override
    return value


@dataclass(frozen=True)
class LoraScaling:
    """The scale of each module's ``B @ A`` from an ``adapter_config.json``."""

    config: Mapping[str, Any]

    def rank(self, module: str) -> int:
        return int(_pattern_value(self.config.get("rank_pattern"), module, self.config.get("r", 1)))

    def scale(self, module: str, rank: int | None = None) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` under rsLoRA); ``rank``: the factors' own, when read."""
        r = self.rank(module) if rank is None else rank
        alpha = _pattern_value(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", r))
        return float(alpha) / (math.sqrt(r) if self.config.get("use_rslora") else r)
