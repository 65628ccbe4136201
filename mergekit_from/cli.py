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

from mergekit_from.errors import one_line, user_exit_code
from mergekit_from.output import overwrite_option
from mergekit_from.weights import allow_pickle_option


class _Cli(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value is a user error like any other: one line, exit 2
            click.echo(f"error: {exc.format_message()}", err=True)
            ctx.exit(exc.exit_code)
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
            code = user_exit_code(exc)
            hint = "" if code is not None else " (MERGEKIT_FROM_DEBUG=1 shows the traceback)"
            click.echo(f"error: {one_line(exc)}{hint}", err=True)
            ctx.exit(1 if code is None else code)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergekit-from")
def main() -> None:
    """FroM and FW-Merging for mergekit, and a Hub model zoo to merge from."""


@main.command("yaml", cls=PrettyPrintHelp)
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
    if origin is not None:  # dict[str, str], list[str]
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def _parameter_rows(spec) -> list[dict[str, typing.Any]]:
    """A method's parameters a recipe may set (the pre-pass's side file is not one)."""
    from mergekit.merge_methods.base import MISSING

    from mergekit_from.methods.side_file import user_parameters

    return [
        {
            "name": p.name,
            "scope": p.scope.value,
            "type": _type_name(p.value_type),
            "default": None if p.default is MISSING else p.default,
            "required": p.default is MISSING,
            "description": p.description,
        }
        for p in user_parameters(spec)
    ]


def _setting_rows(method) -> list[dict[str, typing.Any]]:
    """A pre-pass method's settings, read off its pydantic settings model."""
    from mergekit_from.prepass.registry import settings_model

    model = settings_model(method.spec.name)
    if model is None:
        return []
    rows = []
    for name, field in model.model_fields.items():
        annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        rows.append({
            "name": name,
            "scope": "setting",
            "type": _type_name(annotation),
            "default": None if field.is_required() else field.get_default(call_default_factory=True),
            "required": field.is_required(),
            "description": field.description,
            "per_model": name in model.per_model,
        })
    return rows


@main.command("methods")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per method.")
def methods_cmd(as_json: bool) -> None:
    """List registered merge methods (mergekit's and the plugin's) with their parameters, and
    the settings of the methods with a pre-pass (in a section named after the method, or parameters:)."""
    from mergekit import merge_methods

    from mergekit_from.registry import is_plugin_method

    for method in sorted(merge_methods.registered_methods(), key=lambda m: m.spec.name):
        spec = method.spec
        params, settings = _parameter_rows(spec), _setting_rows(method)
        origin = "mergekit-from" if is_plugin_method(spec.name) else "mergekit"
        if as_json:
            click.echo(json.dumps({"name": spec.name, "origin": origin, "pretty_name": spec.pretty_name,
                                   "base": spec.contract.base.value, "parameters": params, "settings": settings},
                                  default=str))
            continue
        click.echo(f"{spec.name}  [{origin}; base {spec.contract.base.value}]  {spec.pretty_name or ''}".rstrip())
        if settings:
            click.echo(f"  settings (a `{spec.name}:` section, or parameters:):")
        for p in params + settings:
            default = "required" if p["required"] else f"default {p['default']!r}"
            desc = f"  - {p['description']}" if p["description"] else ""
            click.echo(f"    {p['name']:<18} {p['scope']:<9} {p['type']:<28} {default}{desc}")


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
