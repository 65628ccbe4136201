"""Options and value parsers that several commands share."""

from __future__ import annotations

from typing import Any

import click
import yaml

from mergekit_from.errors import ConfigError

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Write into an existing non-empty folder that mergekit-from did not write (same-named files are "
         "replaced, the others kept), as mergekit-yaml does.")

allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True,
    help="Read pickled weights (.bin/.pt) of a folder without safetensors. Unsafe: unpickling can run code.")


def parse_settings(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict, each value read as YAML (``5`` an int, ``a,b`` a string)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip()] = yaml.safe_load(value)
    return settings
