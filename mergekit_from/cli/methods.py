"""``mergekit-from methods``: every registered merge method with its parameters and pre-pass settings."""

from __future__ import annotations

import json
import typing

import click


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


@click.command("methods")
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
