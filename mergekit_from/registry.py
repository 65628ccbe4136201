"""Idempotent registration of the plugin's methods in mergekit's process-global registry.

mergekit 0.1.5 has no plugin discovery: a method exists for ``merge_method:`` lookups only
once ``mergekit.merge_methods.register`` has been called in the same process, and calling it
twice for one name raises. Importing :mod:`mergekit_from` calls :func:`register_all`.
"""

from __future__ import annotations

from mergekit import merge_methods as _mk_methods
from mergekit.merge_methods.base import MergeMethod


def plugin_methods() -> list[MergeMethod]:
    from mergekit_from.methods import ALL_METHODS

    return list(ALL_METHODS)


def register_all() -> list[str]:
    """Register every plugin method not yet known; returns the names newly registered."""
    known = {m.spec.name for m in _mk_methods.registered_methods()}
    added = []
    for method in plugin_methods():
        if method.spec.name not in known:
            _mk_methods.register(method)
            added.append(method.spec.name)
    return added


def is_plugin_method(name: str) -> bool:
    return any(m.spec.name == name for m in plugin_methods())
