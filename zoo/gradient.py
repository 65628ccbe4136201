"""A target's FW gradient at the base, as cached on disk: what probes score candidates against.

A folder ``<cache>/gradients/<key>/`` holds

- ``gradient.json``: the key, the base, the tasks, the objective settings, every tensor's shape,
  bytes and squared gradient norm per task (its *mass*), and the probe subset;
- ``probe.safetensors``: float32 ``grad/<task>/<tensor>`` for the subset tensors only, and the
  base's ``base/<tensor>`` for them, so a probe computes ``tau = candidate - base`` without the base.

Full per-task gradients of a large model are never stored. The key is a sha256 of the base's
commit (or content digest), the calibration data's digest and the objective settings: any change
is a new folder. Written by ``mergekit_from.target_gradient`` (torch), read here with numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from db.paths import cache_root

MANIFEST = "gradient.json"
TENSORS = "probe.safetensors"
FORMAT = 1


def gradients_dir() -> Path:
    return cache_root() / "gradients"


def gradient_key(base_digest: str, calib_digest: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT, "base": base_digest, "calibration": calib_digest, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TargetGradient:
    """The manifest's fields, plus the subset's arrays (loaded on open)."""

    key: str
    base: str
    tasks: list[str]
    settings: dict[str, Any]
    shapes: dict[str, list[int]]
    nbytes: dict[str, int]
    mass: dict[str, dict[str, float]]  # task -> tensor -> ||g||^2
    subset: dict[str, int]  # tensor -> leading rows kept (zoo.probe.choose_subset)
    budget_bytes: int
    grads: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # task -> subset tensor
    base_arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def model_bytes(self) -> int:
        return sum(self.nbytes.values())

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "base": self.base, "tasks": self.tasks, "settings": self.settings,
                "shapes": self.shapes, "nbytes": self.nbytes, "mass": self.mass, "subset": self.subset,
                "budget_bytes": self.budget_bytes}

    def write(self, root: Path) -> Path:
        """Into ``root/<key>/``, atomically: the manifest is renamed in last, so its presence means complete."""
        folder = root / self.key
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"grad/{t}/{n}": np.ascontiguousarray(self.grads[t][n], np.float32)
                  for t in self.tasks for n in self.subset}
        arrays.update({f"base/{n}": np.ascontiguousarray(self.base_arrays[n], np.float32) for n in self.subset})
        save_file(arrays, str(folder / TENSORS))
        tmp = folder / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.manifest(), indent=1))
        os.replace(tmp, folder / MANIFEST)
        return folder

    @classmethod
    def open(cls, folder: Path) -> "TargetGradient":
        meta = json.loads((folder / MANIFEST).read_text())
        arrays = load_file(str(folder / TENSORS))
        grads = {t: {n: arrays[f"grad/{t}/{n}"] for n in meta["subset"]} for t in meta["tasks"]}
        meta.pop("format")
        return cls(**meta, grads=grads, base_arrays={n: arrays[f"base/{n}"] for n in meta["subset"]})

    @classmethod
    def cached(cls, key: str, root: Path | None = None) -> "TargetGradient | None":
        folder = (root or gradients_dir()) / key
        return cls.open(folder) if (folder / MANIFEST).is_file() else None
