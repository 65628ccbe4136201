"""Release-ready output of a merge: a model card with provenance, and the upload to a Hub.

The card's metadata follows the Hub's conventions for merges (``base_model`` lists the merged
models, ``base_model_relation: merge``, ``tags: [merge, mergekit, ...]``) so that the release
appears in the model tree of its parents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token

from mergekit_from.card import write_card
from mergekit_from.errors import ConfigError


@dataclass
class Source:
    """One input of the merge, as it was on the Hub when it was used."""

    repo_id: str
    sha: str | None
    score: float | None = None
    coefficient: float | None = None
    pick_share: float | None = None
    components: dict[str, Any] = field(default_factory=dict)


@dataclass
class Release:
    base: Source
    sources: list[Source]
    method: str
    settings: dict[str, Any]
    target: str
    recipe: str
    endpoint: str
    evaluation: dict[str, dict[str, float]] | None = None  # row label -> {task: loss}
    excluded: list[dict[str, str]] = field(default_factory=list)
    run_id: int | None = None
    probes: dict[str, Any] | None = None  # what auto's probes read before download (ProbeReport.summary)


def worse_than_base(evaluation: dict[str, dict[str, float]] | None) -> list[str]:
    """The target tasks on which the merge's calibration loss is higher than the base's."""
    if not evaluation:
        return []
    return [t for t, loss in evaluation["merged"].items() if loss > evaluation["base"][t]]


def _method_title(name: str) -> str:
    """The method as its mergekit spec names it, with its paper: "FroM (...) ([arXiv:...](url))"."""
    from mergekit import merge_methods

    spec = merge_methods.get(name).spec
    paper = spec.reference_url.rsplit("/", 1)[-1] if spec.reference_url else None
    return f"{spec.pretty_name} ([arXiv:{paper}]({spec.reference_url}))" if paper else spec.pretty_name or name


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_release_card(folder: Path, r: Release) -> None:
    """The card of an `auto` merge: Hub merge metadata, sources pinned to commits, why, evaluation, recipe."""
    merged = [s for s in r.sources if (s.coefficient or 0) != 0 or (s.pick_share or 0) > 0]
    write_card(folder, _card_body(r, merged), base_model=[r.base.repo_id] + [s.repo_id for s in merged],
               base_model_relation="merge", library_name="transformers",
               tags=["merge", "mergekit", "mergekit-from", r.method])


def _card_body(r: Release, merged: list[Source]) -> str:
    lines = [
        f"# {r.method} merge of {len(merged)} fine-tunes of {r.base.repo_id}",
        "",
        f"Made by `mergekit-from auto` with {_method_title(r.method)} for the target:",
        "",
        f"> {r.target}",
        "",
        f"Candidates were crawled from `{r.endpoint}`, scored for the target, and the top {len(r.sources)} "
        "compatible ones formed the pool. Every input is pinned to the commit that was downloaded.",
        "",
        "## Sources",
        "",
        "| model | commit | relevance score | coefficient | FW pick share |",
        "|---|---|---|---|---|",
        f"| {r.base.repo_id} (base) | `{r.base.sha or '?'}` | – | – | – |",
    ]
    for s in r.sources:
        lines.append(f"| {s.repo_id} | `{s.sha or '?'}` | {_fmt(s.score)} | {_fmt(s.coefficient, 4)} | "
                     f"{_fmt(s.pick_share, 2)} |")
    lines += [
        "",
        "The coefficient is the weight of the model's task vector (its difference from the base) in the merge: "
        "merged = base + Σ coefficient · (model − base), averaged over tensors by size "
        "(FroM and per-tensor FW weights differ per tensor).",
        "",
        "## Why these models",
        "",
        "Relevance components per pool model (value × weight; compatibility gates the score):",
        "",
    ]
    for s in r.sources:
        parts = ", ".join(f"{k} {v['value']}" for k, v in s.components.items() if isinstance(v, dict) and "value" in v)
        lines.append(f"- **{s.repo_id}**: {parts}")
    if r.excluded:
        lines += ["", "Left out of the pool:", ""]
        lines += [f"- {e['repo_id']}: {e['why']}" for e in r.excluded]
    lines += ["", "## Method and parameters", "", f"```json\n{json.dumps(r.settings, indent=1, sort_keys=True)}\n```"]
    if r.evaluation:
        tasks = sorted({t for row in r.evaluation.values() for t in row})
        lines += [
            "",
            "## Evaluation",
            "",
            "Mean cross-entropy of the responses of the target's calibration data (lower is better; these samples "
            "also drive the data-informed methods, so this is an in-sample check, not a benchmark):",
            "",
            "| model | " + " | ".join(tasks) + " | mean |",
            "|---" * (len(tasks) + 2) + "|",
        ]
        for label, row in r.evaluation.items():
            vals = [row.get(t) for t in tasks]
            mean = sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals))
            lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(mean)} |")
        worse = worse_than_base(r.evaluation)
        if worse:
            lines += ["", f"**Warning: the merge is worse than the base on {', '.join(worse)}** (higher calibration "
                      "loss). Try another method, other settings or a smaller pool before using it for these tasks."]
    lines += [
        "",
        "## Reproduce",
        "",
        "The exact recipe is `mergekit_config.yml` (inputs are the downloaded snapshots in the Hugging Face cache; "
        "calibration data is in `calibration/`):",
        "",
        "```bash\nmergekit-from yaml mergekit_config.yml ./merged\n```",
        "",
        f"```yaml\n{r.recipe.strip()}\n```",
        "",
    ]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str, endpoint: str | None, token: str | None = None) -> str:
    """Upload ``folder`` as model repo ``repo_id``; returns the commit URL. The token is only passed on."""
    token = token or get_token()
    if not token:
        raise ConfigError(f"--push-to-hub {repo_id}: no token; set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message="Upload merge made by mergekit-from auto")
    return info.commit_url
