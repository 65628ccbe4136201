"""The ``mergekit-from`` command line: the group, its error handling, and one module per command.

Every subcommand reports a user error as one line on stderr with a non-zero exit; a bug keeps
its traceback only with ``MERGEKIT_FROM_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import click

from mergekit_from.errors import one_line, user_exit_code


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


def _register_commands() -> None:
    from mergekit_from.cli import auto, demo, lora, methods, realzoo, taskzoo, yaml, zoo

    for command in (yaml.yaml_cmd, methods.methods_cmd, auto.auto_cmd, demo.demo_cmd, lora.lora_cmd, zoo.zoo,
                    taskzoo.taskzoo_cmd, taskzoo.eval_cmd, realzoo.realzoo_cmd):
        main.add_command(command)


_register_commands()
