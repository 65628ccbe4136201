"""Output folders: checked before any work, written so that nothing the user had is lost.

Every command that writes a folder (``yaml``, ``lora``, ``auto``, ``taskzoo build``, ``demo``)
calls :meth:`Output.check` before it computes anything. The rule:

- OUT is a folder or does not exist yet, and nothing above it is a file;
- OUT neither is nor contains one of the run's inputs (models, adapters, recipe, data, store);
- a non-empty OUT that mergekit-from did not write is refused unless ``--overwrite``, which
  writes the run's entries into it (same-named ones replaced, the rest kept) as mergekit-yaml does;
- an earlier output of mergekit-from (its marker file lists every entry in it) is replaced whole.

A run writes into a staging folder ``.{OUT name}.partial-{pid}-*`` next to OUT, moved into place
only when complete; one left behind by a killed run is removed by the next run on that OUT.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Literal

from mergekit_from.errors import OutputError

MARKER = ".mergekit-from.json"  # a dotfile: transformers, peft and mergekit ignore it
# Commands whose outputs are model folders, and so may replace each other's.
MODEL_COMMANDS = frozenset({"yaml", "lora", "auto"})

Mode = Literal["new", "replace", "into"]
STAGING = re.compile(r"\..+\.(?:partial|old)-")  # a run's staging folders, named after its OUT


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _forms(path: str | os.PathLike) -> set[Path]:
    """The path as spelled (made absolute) and with its links followed."""
    p = Path(path).expanduser()
    return {Path(os.path.abspath(p)), p.resolve()}


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("entries"), list) else None


def written_by(folder: Path, command: str) -> bool:
    """``folder`` holds an earlier output that ``command`` may replace: marked by a command of the
    same kind, and holding nothing besides the entries its marker lists."""
    marker = read_marker(folder)
    if marker is None:
        return False
    if marker.get("command") != command and not {marker.get("command"), command} <= MODEL_COMMANDS:
        return False
    listed = set(marker["entries"]) | {MARKER}
    return all(child.name in listed or STAGING.match(child.name) for child in folder.iterdir())


def _check_ancestors(out: Path, given: str) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"output {given}: {parent} is a file, not a folder")
            return


def _check_inputs(given: str, inputs: Iterable[str | os.PathLike]) -> None:
    outs = _forms(given)
    for item in inputs:
        if not Path(item).expanduser().exists():  # a Hub id, or a file the run reports missing itself
            continue
        if any(_within(form, o) for form in _forms(item) for o in outs):
            raise OutputError(f"output {given} contains the run's input {item}; write to another folder")


@dataclass(frozen=True)
class Output:
    """A checked output location; ``mode`` says how the run's files get there."""

    path: Path
    command: str
    mode: Mode  # new: OUT is absent; replace: an earlier output, swapped whole; into: written into OUT

    @classmethod
    def check(cls, path: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike] = (),
              overwrite: bool = False) -> "Output":
        """Apply the rule above to OUT = ``path`` for a run of ``command`` reading ``inputs``."""
        given = str(path)
        out = Path(path).expanduser().resolve()
        _check_ancestors(out, given)
        if out.exists() and not out.is_dir():
            raise OutputError(f"output {given} is an existing file, not a folder")
        _check_inputs(given, inputs)
        if not out.exists():
            return cls(out, command, "new")
        if written_by(out, command) and not _within(Path.cwd().resolve(), out):
            return cls(out, command, "replace")
        if overwrite or not any(out.iterdir()):
            return cls(out, command, "into")  # also an earlier output around the working directory
        raise OutputError(f"output {given} is a non-empty folder not written by mergekit-from; "
                          "pass --overwrite to write into it (its other files are kept)")

    def mark(self, folder: Path, entries: Iterable[str]) -> None:
        marker = {"tool": "mergekit-from", "version": _version(), "command": self.command,
                  "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "entries": sorted(set(entries) - {MARKER})}
        (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")

    def claim(self, entries: Iterable[str]) -> Path:
        """For commands that build OUT in place (task zoo, demo): create and mark it up front, so
        that a killed build is recognised as this command's on the next run."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.mark(self.path, entries)
        return self.path

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """Yield a staging folder named like OUT; on success, mark it and move it into place."""
        with _staging(self.path) as tmp:
            yield tmp
            self.mark(tmp, (p.name for p in tmp.iterdir()))
            (_move_into if self.mode == "into" else _swap_in)(tmp, self.path)


def _version() -> str:
    from mergekit_from import __version__

    return __version__


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A folder named like ``out`` inside a hidden sibling, removed afterwards whatever happens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    tmp = holder / out.name
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _move_into(src: Path, dst: Path) -> None:
    """Move every file of ``src`` to the same place under ``dst``; checks every clash first."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir() and target.exists() and not target.is_dir():
            raise OutputError(f"cannot write folder {target}: a file of that name is in the way")
        if not path.is_dir() and target.is_dir() and not target.is_symlink():
            raise OutputError(f"cannot write file {target}: a folder of that name is in the way")
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(path, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        pass
    return True


def remove_stale(out: Path) -> None:
    """Remove staging (and swapped-out) folders of ``out`` whose run is no longer alive."""
    name = glob.escape(out.name)
    for leftover in [*out.parent.glob(f".{name}.partial-*"), *out.parent.glob(f".{name}.old-*")]:
        pid = re.match(r"(?:partial|old)-(\d+)", leftover.name[len(out.name) + 2:])
        if pid is None or int(pid[1]) == os.getpid() or not _pid_alive(int(pid[1])):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def replace_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Stage a folder that a tool owns outright (a model inside a task zoo, a benchmark cache)
    and swap it in whole; the owner has checked the location."""
    out = Path(path).expanduser().resolve()
    with _staging(out) as tmp:
        yield tmp
        _swap_in(tmp, out)
