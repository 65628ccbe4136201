"""Model cards: the Hub's YAML metadata (``base_model``, ``tags``...) over a markdown body.

Written through huggingface_hub's :class:`ModelCard`, so the metadata is valid YAML whatever the
values hold (a path with a colon, a repo id list) and fields left as None are omitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData


def write_card(folder: Path, body: str, **metadata: Any) -> None:
    """``folder/README.md``: ``metadata`` (ModelCardData fields or extra keys) then ``body``."""
    data = ModelCardData(**metadata)
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n").save(Path(folder) / "README.md")
