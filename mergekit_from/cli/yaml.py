"""``mergekit-from yaml``: a mergekit YAML recipe, run with the plugin's methods registered."""

from __future__ import annotations

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_from.cli.options import allow_pickle_option, overwrite_option


@click.command("yaml", cls=PrettyPrintHelp)
@click.argument("config_file")
@click.argument("out_path")
@overwrite_option
@allow_pickle_option
@add_merge_options
def yaml_cmd(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool,
             allow_pickle: bool) -> None:
    """Run a mergekit YAML recipe (as mergekit-yaml) with the plugin's methods registered."""
    from mergekit_from.recipe import run_recipe

    merge_options.apply_global_options()
    run_recipe(config_file, out_path, merge_options, overwrite, allow_pickle)
