"""The plugin's mergekit merge methods, one small module each."""

from mergekit_from.methods.from_merge import from_merge

ALL_METHODS = (from_merge,)

__all__ = ["ALL_METHODS", "from_merge"]
