"""The one parameter that links a per-tensor kernel to its whole-model pre-pass.

``mergekit-from yaml`` runs a method's pre-pass, which writes a side file (a plan, Gram
matrices) and sets this parameter to its path before mergekit plans the merge; run without
the pre-pass (plain ``mergekit-yaml``), the kernel says so instead of merging wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from mergekit.merge_methods.base import MergeMethodSpec, ParameterScope, ParameterSpec

from mergekit_from.errors import ConfigError


@dataclass(frozen=True)
class SideFileSpec(ParameterSpec):
    """A parameter only the pre-pass sets: not a setting a recipe may give."""


def side_file_spec(name: str, what: str) -> ParameterSpec:
    return SideFileSpec(
        name, Optional[str], ParameterScope.SHARED, default=None,
        description=f"set by the pre-pass of `mergekit-from yaml` ({what})",
    )


def user_parameters(spec: MergeMethodSpec) -> tuple[ParameterSpec, ...]:
    """The parameters a recipe may set (every one but the pre-pass's side file)."""
    return tuple(p for p in spec.parameters if not isinstance(p, SideFileSpec))


def side_file(method: str, parameters: dict[str, Any], name: str) -> str:
    path = parameters[name]
    if not path:
        raise ConfigError(f"merge_method {method!r} runs through `mergekit-from yaml` (it needs its pre-pass)")
    return path
