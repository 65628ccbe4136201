"""mergekit-from: FroM and FW-Merging for mergekit, and a Hub model zoo to merge from.

Importing this package registers the plugin's merge methods with mergekit, so that
``merge_method: from`` works in recipes and ``merge_state_dicts(..., method="from")`` works
in Python.
"""

from mergekit_from.registry import register_all

__version__ = "0.1.0"

register_all()

__all__ = ["__version__", "register_all"]
