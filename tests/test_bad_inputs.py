"""The bad-input matrix (see ``tests/bad_input_cases``): exit code 2, one line on stderr naming
the culprit, no traceback, and the output location absent or byte-identical afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.bad_input_cases import Case, all_cases, snapshot

DOC = Path(__file__).parents[1] / "docs" / "errors.md"
CASES = all_cases()


def _partials(paths: list[Path]) -> set[str]:
    return {str(p) for q in paths for p in q.parent.glob(".*partial*")} if paths else set()


def _invoke(case: Case, run, monkeypatch) -> tuple[int, str]:
    if case.subprocess:
        env = {**os.environ, **run.env}
        proc = subprocess.run([sys.executable, "-m", "mergekit_from.cli", *run.argv], capture_output=True,
                              text=True, timeout=300, env=env, cwd=run.cwd, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stderr
    from mergekit_from.cli import main

    if run.cwd is not None:
        monkeypatch.chdir(run.cwd)
    result = CliRunner().invoke(main, run.argv, env=run.env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.subprocess] if c.subprocess else [])
                                  for c in CASES])
def test_bad_input(case: Case, request, tmp_path, monkeypatch):
    env = SimpleNamespace(tmp=tmp_path, **{name: request.getfixturevalue(name) for name in case.fixtures})
    run = case.build(env)
    before = {p: snapshot(p) for p in run.protect}
    partials = _partials(run.protect)
    code, stderr = _invoke(case, run, monkeypatch)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert case.message in lines[0], lines[0]
    if run.culprit is not None:
        assert run.culprit in lines[0], lines[0]
    for p, picture in before.items():
        assert snapshot(p) == picture, f"{p} changed"
    assert _partials(run.protect) == partials


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def doc_table(cases: list[Case]) -> str:
    rows = ["| case | command | message |", "|---|---|---|"]
    rows += [f"| `{c.id}` | `{c.command}` | {_cell(c.message)} |" for c in cases]
    return "\n".join(rows)


HEADER = """# Errors: the bad-input matrix

Every case below is a test (`tests/test_bad_inputs.py`, cases in `tests/bad_input_cases/`). Each one runs the real
`mergekit-from` command line and checks: exit code 2, one line on stderr that starts with `error:` and names the
culprit, no traceback, and the output location absent or byte-identical afterwards. The message column is the fixed
part of that line. Regenerate this file with `python -m tests.test_bad_inputs` after adding a case.

"""


def test_docs_list_the_matrix():
    assert DOC.read_text(encoding="utf-8") == HEADER + doc_table(CASES) + "\n", "run: python -m tests.test_bad_inputs"


def test_matrix_is_large():
    assert len(CASES) >= 50


if __name__ == "__main__":
    DOC.write_text(HEADER + doc_table(CASES) + "\n", encoding="utf-8")
    print(f"wrote {DOC} ({len(CASES)} cases)")
