"""The ``mergekit-from`` command line.

Every subcommand reports a user error as one line on stderr with a non-zero exit; a bug keeps
its traceback only with ``MERGEKIT_FROM_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
import typing

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_from.errors import MergekitFromError, one_line
from mergekit_from.weights import allow_pickle_option


class _Cli(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:  # Ctrl-C: 128 + SIGINT, as shells report it; staged outputs removed themselves
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `mergekit-from methods | head`: the reader left, nothing to report
            sys.stderr = open(os.devnull, "w")
            ctx.exit(0)
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into lines
            if os.environ.get("MERGEKIT_FROM_DEBUG"):
                raise
            code = exc.exit_code if isinstance(exc, MergekitFromError) else 1
            hint = "" if isinstance(exc, MergekitFromError) else " (MERGEKIT_FROM_DEBUG=1 shows the traceback)"
            click.echo(f"error: {one_line(exc)}{hint}", err=True)
            ctx.exit(code)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergekit-from")
def main() -> None:
    """FroM and FW-Merging for mergekit, and a Hub model zoo to merge from."""


@main.command("yaml", cls=PrettyPrintHelp)
@click.argument("config_file")
@click.argument("out_path")
@allow_pickle_option
@add_merge_options
def yaml_cmd(merge_options: MergeOptions, config_file: str, out_path: str, allow_pickle: bool) -> None:
    """Run a mergekit YAML recipe (as mergekit-yaml) with the plugin's methods registered."""
    from mergekit_from.recipe import run_recipe

    merge_options.apply_global_options()
    run_recipe(config_file, out_path, merge_options, allow_pickle=allow_pickle)


def _type_name(annotation: typing.Any) -> str:
    """Readable parameter types: ``float >= 0``, ``one of all|linear``, ``float | None``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        bounds = []
        for m in meta:
            for c in getattr(m, "metadata", [m]):
                for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(c, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(c, attr)}")
        return " ".join([_type_name(inner), *bounds])
    if origin is typing.Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(annotation))
    if origin is typing.Union:
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per method.")
def methods_cmd(as_json: bool) -> None:
    """List registered merge methods (mergekit's and the plugin's) with their parameters."""
    from mergekit import merge_methods
    from mergekit.merge_methods.base import MISSING

    from mergekit_from.registry import is_plugin_method

    for method in sorted(merge_methods.registered_methods(), key=lambda m: m.spec.name):
        spec = method.spec
        params = [
            {
                "name": p.name,
                "scope": p.scope.value,
                "type": _type_name(p.value_type),
                "default": None if p.default is MISSING else p.default,
                "required": p.default is MISSING,
                "description": p.description,
            }
            for p in spec.parameters
        ]
        origin = "mergekit-from" if is_plugin_method(spec.name) else "mergekit"
        if as_json:
            click.echo(json.dumps({"name": spec.name, "origin": origin, "pretty_name": spec.pretty_name,
                                   "base": spec.contract.base.value, "parameters": params}, default=str))
            continue
        click.echo(f"{spec.name}  [{origin}; base {spec.contract.base.value}]  {spec.pretty_name or ''}".rstrip())
        for p in params:
            default = "required" if p["required"] else f"default {p['default']!r}"
            desc = f"  - {p['description']}" if p["description"] else ""
            click.echo(f"    {p['name']:<12} {p['scope']:<9} {p['type']:<28} {default}{desc}")


def _register_subcommands() -> None:
    """Subcommands that live in their own modules (one line each)."""
    from mergekit_from.auto import auto_cmd
    from mergekit_from.demo import demo_cmd
    from mergekit_from.lora import lora_cmd
    from mergekit_from.taskzoo.cli import eval_cmd, taskzoo_cmd
    from zoo.cli import zoo

    main.add_command(auto_cmd)
    main.add_command(demo_cmd)
    main.add_command(lora_cmd)
    main.add_command(zoo)
    main.add_command(taskzoo_cmd)
    main.add_command(eval_cmd)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
