"""mergekit-from: FroM and FW-Merging for mergekit, and a Hub model zoo to merge from.

Importing this package registers the plugin's merge methods with mergekit, so that
``merge_method: from`` works in recipes and ``merge_state_dicts(..., method="from")`` works
in Python.
"""

import os
import sys

if "torch" not in sys.modules:
    # torch's OpenMP threads spin while they wait for work. When the cores are shared (another
    # job, a second merge), the tiny kernels of a pre-pass on a small model then ran 80x slower
    # here (87 s vs 1.1 s per Frank-Wolfe iteration). Sleeping waits cost nothing measurable.
    # Only effective before torch loads; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mergekit_from.registry import register_all  # noqa: E402

__version__ = "0.1.0"

register_all()

__all__ = ["__version__", "register_all"]
