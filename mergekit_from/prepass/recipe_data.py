"""The data files a pre-pass reads: found relative to the recipe, and copied next to the output
so that its recorded recipe re-runs from anywhere."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from mergekit_from.errors import ConfigError


def resolve_path(path: str, recipe_dir: Path, what: str, accept: Callable[[Path], bool] = Path.exists) -> Path:
    """A data path of a recipe (calibration file, init model, tokenizer): taken relative to the
    recipe's folder first, then to the working directory. ``what`` starts the error, which names
    every place looked at."""
    p = Path(path).expanduser()
    places = [p] if p.is_absolute() else list(dict.fromkeys([recipe_dir / p, Path.cwd() / p]))
    found = next((place for place in places if accept(place)), None)
    if found is None:
        looked = "" if places == [Path(path)] else f" (looked in {', '.join(map(str, places))})"
        raise ConfigError(f"{what}: {path}{looked}")
    return found


DATA_DIR = "calibration"  # where an output keeps the data its recorded recipe reads


def copy_data(files: Sequence[tuple[str, Path]], out_dir: Path) -> list[str]:
    """Copy data files into ``out_dir/calibration/`` as ``<stem>.jsonl`` (stems made unique) so that
    the output's recorded recipe re-runs from anywhere; returns the copies' paths relative to ``out_dir``."""
    (out_dir / DATA_DIR).mkdir(exist_ok=True)
    copies: list[str] = []
    for stem, src in files:
        stem = re.sub(r"[^\w.-]+", "_", stem) or "data"
        name, n = f"{stem}.jsonl", 1
        while f"{DATA_DIR}/{name}" in copies:
            n += 1
            name = f"{stem}-{n}.jsonl"
        shutil.copyfile(src, out_dir / DATA_DIR / name)
        copies.append(f"{DATA_DIR}/{name}")
    return copies


def set_setting(raw: dict[str, Any], section: str, key: str, value: Any) -> None:
    """Rewrite a setting where the recipe gave it (top-level ``parameters:`` or ``section:``)."""
    if key in (raw.get("parameters") or {}):
        raw["parameters"][key] = value
    else:
        raw.setdefault(section, {})[key] = value
