"""The bad-input matrix: every case a user could plausibly hit, run through the real CLI.

Each case builds its inputs in a fresh folder and returns the command to run, the paths that
must come out untouched (absent stays absent, a file or folder stays byte-identical) and the
culprit its one error line must name. ``tests/test_bad_inputs.py`` runs them all and checks
that ``docs/errors.md`` lists exactly these cases (``python -m tests.test_bad_inputs`` rewrites it).

Cases live in one module per topic below; each module exports ``CASES``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable


@dataclass(frozen=True)
class Run:
    """What one case runs: CLI arguments (after ``mergekit-from``), what must stay untouched,
    and the text its error line must name (a path, a key, a tensor...)."""

    argv: list[str]
    protect: list[Path] = field(default_factory=list)
    culprit: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # as docs/errors.md shows it
    message: str  # a fixed part of the error line
    build: Callable[[SimpleNamespace], Run]
    fixtures: tuple[str, ...] = ("tiny",)
    subprocess: bool = False  # run the console script in its own process (signals, stdin, env)


def snapshot(path: Path) -> object:
    """A comparable picture of ``path``: None when absent, a digest per file otherwise."""
    if path.is_symlink() or path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(path.rglob("*"))
    }


def all_cases() -> list[Case]:
    import importlib
    import pkgutil

    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        cases.extend(importlib.import_module(f"{__name__}.{info.name}").CASES)
    ids = [c.id for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, f"duplicate case ids: {sorted(dupes)}"
    return cases
