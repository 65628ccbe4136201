"""Progress bars of the pre-passes (off with ``--quiet``)."""

from __future__ import annotations

from typing import Iterable


def progress(iterable: Iterable, desc: str, total: int | None = None, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=quiet, leave=False)
