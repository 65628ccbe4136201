"""A built task zoo as read back: its manifest, the folders it names, and repo-id lookups."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_from.errors import ModelInputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 3: strict JSON (a run without a probe logs null and why, not NaN); "training" names each plan


@dataclass(frozen=True)
class Zoo:
    """A built zoo: its folder and manifest, with helpers that return absolute paths."""

    root: Path
    manifest: dict[str, Any]

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def targets(self) -> list[str]:
        return list(self.manifest["target_tasks"])

    def model_dir(self, name: str) -> Path:
        try:
            return self.root / self.manifest["models"][name]["path"]
        except KeyError:
            raise ModelInputError(f"{self.root}: no model {name!r} in the zoo") from None

    @property
    def base(self) -> Path:
        return self.model_dir("base")

    def expert(self, task: str, kind: str = "fft") -> Path:
        return self.model_dir(f"{kind}-{task}")

    def calibration(self, task: str) -> Path:
        return self.root / self.manifest["tasks"][task]["calibration"]

    def accuracy(self, name: str) -> dict[str, float]:
        return self.manifest["models"][name]["accuracy"]


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write ``root/manifest.json`` whole (via a temporary file): its presence means the zoo is complete."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, allow_nan=False))
    tmp.rename(root / MANIFEST)


def load_manifest(root: str | Path, format_version: int = FORMAT_VERSION, command: str = "taskzoo build") -> Zoo:
    """The zoo at ``root`` (one ``command`` built, in format ``format_version``)."""
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise ModelInputError(f"{root}: not a built zoo (no {MANIFEST}); run `mergekit-from {command}`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != format_version:
        raise ModelInputError(f"{path}: zoo format {manifest.get('format')!r}, expected {format_version}; rebuild it")
    return Zoo(root.resolve(), manifest)


def find_in_zoo(root: Path, repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in the zoo at ``root`` or up to two levels above it (``models/taskzoo``), if any;
    any zoo's manifest (task zoo or real zoo) names its models' repo ids and paths alike."""
    for candidate in (root, *list(root.parents)[:2]):
        if (candidate / MANIFEST).is_file():
            manifest = json.loads((candidate / MANIFEST).read_text())
            for entry in manifest.get("models", {}).values():
                if entry["repo_id"] == repo_id:
                    return candidate.resolve() / entry["path"]
    return None
