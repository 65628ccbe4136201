"""One error hierarchy for everything the project reports to users.

The CLI prints ``str(err)`` of a :class:`MergekitFromError` as a single line and exits
non-zero; anything else is a bug and keeps its traceback under ``MERGEKIT_FROM_DEBUG=1``.
"""

from __future__ import annotations

from pydantic import ValidationError


class MergekitFromError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class ConfigError(MergekitFromError):
    """A recipe or a command-line value is invalid (missing base, bad parameter...)."""


class ModelInputError(MergekitFromError):
    """An input model is missing, unreadable or incompatible with the base."""


class TensorValueError(ModelInputError):
    """An input tensor holds NaN or Inf."""


class AdapterError(ModelInputError):
    """PEFT adapters that cannot be merged together."""


class CalibrationError(MergekitFromError):
    """Calibration data that is missing, malformed or empty (the message names file and line)."""


class OutputError(MergekitFromError):
    """An output location that a run must not write to (a file, a folder holding its inputs...)."""


def user_exit_code(exc: BaseException) -> int | None:
    """The exit code of a user error: a :class:`MergekitFromError`'s, or the ``exit_code`` that the
    zoo's and the store's own error classes carry; None for a bug."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else None


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none); pydantic errors condensed."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            parts.append(f"{loc + ': ' if loc else ''}{err['msg']}{got}")
        return "; ".join(parts)
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def one_line(exc: BaseException) -> str:
    """A single-line description of ``exc`` for the CLI: a user error's (or a pydantic error's)
    first line as it is, anything else's prefixed with its class name."""
    text = first_line(exc)
    if user_exit_code(exc) is not None or isinstance(exc, ValidationError):
        return text
    return f"{type(exc).__name__}: {text}"
