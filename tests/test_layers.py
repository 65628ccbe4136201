"""The layers hold: import-linter's contracts in pyproject.toml, and what ``import db, zoo`` loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def lint(*contracts: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on the named contracts of pyproject.toml, in a process importing this checkout."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename='pyproject.toml', limit_to_contracts={contracts!r}, "
            "no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)


@pytest.mark.parametrize("contract", ["layers", "light-layers", "acyclic-lower", "acyclic-mergekit-from"])
def test_import_contract_is_kept(contract):
    run = lint(contract)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_lower_layers_load_neither_torch_nor_mergekit():
    code = ("import json, sys; import db, zoo.crawler, zoo.fingerprint, zoo.scoring, zoo.inventory; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'mergekit', 'mergekit_from', 'transformers', 'peft'))))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == []
