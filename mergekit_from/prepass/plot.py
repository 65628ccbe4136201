"""The FW trace as a figure (``fw_trace.png``): the objective per iteration and which models
were picked."""

from __future__ import annotations

from pathlib import Path

import torch

from mergekit_from.prepass.trace import FWTrace

PLOT_FILE = "fw_trace.png"


def plot_trace(trace: FWTrace, path: Path, labels: dict[str, str] | None = None) -> None:
    """Save :func:`trace_figure` as a PNG whose metadata lists the candidates as labelled."""
    import matplotlib.pyplot as plt

    fig = trace_figure(trace, labels)
    names = ", ".join(t.get_text() for t in fig.axes[1].get_yticklabels())
    fig.savefig(path, dpi=110, metadata={"Title": fig.axes[0].get_title(), "Description": f"candidates: {names}"})
    plt.close(fig)


def trace_figure(trace: FWTrace, labels: dict[str, str] | None = None):
    """Objective per iteration, and which models were picked (share of tensors) per iteration.

    Candidates are labelled by ``labels[ref]`` (e.g. Hub repo ids), else by their folder name."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = trace.iterations
    xs = [it.iter for it in its] + [len(its)]
    ys = [it.objective for it in its] + [trace.final_objective]
    names = [(labels or {}).get(r) or Path(r).name or r for r in trace.pool]
    share = torch.zeros(len(names), len(its))
    for j, it in enumerate(its):
        for ref, frac in it.pick_share.items():
            if ref in trace.pool:
                share[trace.pool.index(ref), j] += frac
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 3 + 0.25 * len(names)), sharex=True)
    ax1.plot(xs, ys, marker="o")
    ax1.set_ylabel(f"objective ({trace.settings.get('objective') or trace.settings['ada_loss']})")
    title = f"{trace.method}: targets {', '.join(trace.targets)} (last point: after the last step)"
    ax1.set_title(textwrap.fill(title, 70), fontsize=9)  # wrapped: tight_layout keeps every line in the figure
    extent = (-0.5, len(its) - 0.5, len(names) - 0.5, -0.5)
    ax2.imshow(share.numpy(), aspect="auto", cmap="Blues", vmin=0, interpolation="nearest", extent=extent)
    ax2.set_yticks(range(len(names)), names, fontsize=7)
    ax2.set_xlim(-0.5, len(its) + 0.5)
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("picked (share of tensors)")
    fig.tight_layout()
    return fig
