"""The plugin's mergekit merge methods, one small module each."""

from mergekit_from.methods.adamerging import adamerging
from mergekit_from.methods.from_merge import from_merge
from mergekit_from.methods.fw_merge import fw_hard, fw_soft
from mergekit_from.methods.regmean import regmean

ALL_METHODS = (from_merge, fw_hard, fw_soft, adamerging, regmean)

__all__ = ["ALL_METHODS", "adamerging", "from_merge", "fw_hard", "fw_soft", "regmean"]
