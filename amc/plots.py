"""Plots that the search, its callbacks and the commands share: a per-unit policy and accuracy/cost fronts.

:func:`plot_policy` draws ``best_policy.png`` (``amc.train``) and the TensorBoard policy images
(:class:`amc.agents.callbacks.TensorBoardLogger`); :func:`plot_pareto` draws ``pareto.png`` of
``python -m amc.report``. Figures are built with matplotlib's object API (no global pyplot state).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from amc.utils import atomic_write_bytes


def plot_policy(policy: Mapping[str, Any], title: str = "") -> Figure:
    """A figure of a per-unit policy: kept output-channel ratio (bars) and weight/activation bits (lines).

    Args:
        policy: a policy dict (:meth:`amc.compress.Policy.to_dict`).
        title: the figure title.
    """
    units = policy["units"]
    n = len(units)
    x = np.arange(n)
    keep = [u["out_channels"] / u["dense_out_channels"] for u in units]
    fig = Figure(figsize=(max(5.0, 0.35 * n + 2.0), 3.6), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, keep, color="#4c72b0", alpha=0.8, label="kept ratio")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept output channels")
    ax.set_xticks(x)
    ax.set_xticklabels(
        [str(i) for i in x] if n > 12 else [u["name"] for u in units], rotation=60, ha="right", fontsize=7
    )
    bits = ax.twinx()
    bits.plot(x, [u["w_bits"] for u in units], "o-", color="#dd8452", label="weight bits")
    bits.plot(x, [u["a_bits"] for u in units], "s--", color="#55a868", label="activation bits")
    bits.set_ylim(0, max(8, *(u["w_bits"] for u in units), *(u["a_bits"] for u in units)) + 1)
    bits.set_ylabel("bits (32 = float)")
    handles = ax.get_legend_handles_labels()[0] + bits.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + bits.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="lower left", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    atomic_write_bytes(path, buf.getvalue())


def save_policy_plot(policy: Mapping[str, Any], path: str | Path, title: str = "") -> None:
    """Write :func:`plot_policy` as a PNG file."""
    save_figure(plot_policy(policy, title), path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower cost and higher accuracy), sorted by cost.

    Args:
        points: (cost, accuracy) pairs.
    """
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _accuracy(run: Mapping[str, Any]) -> float:
    return float(run["test_accuracy"] if run.get("test_accuracy") is not None else run["accuracy"])


def plot_pareto(runs: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy (test when available, else search) against the latency and MACs ratios, per agent."""
    metrics = [m for m in ("latency", "macs") if any(m in r.get("ratios", {}) for r in runs)]
    fig = Figure(figsize=(5.0 * max(1, len(metrics)), 4.0), dpi=90)
    agents = sorted({str(r.get("agent")) for r in runs})
    colors = {a: f"C{i}" for i, a in enumerate(agents)}
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for agent in agents:
            pts = [
                (float(r["ratios"][metric]), _accuracy(r))
                for r in runs
                if str(r.get("agent")) == agent and metric in r.get("ratios", {})
            ]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[agent], label=agent, alpha=0.75, s=22)
            front = pareto_front(pts)
            ax.plot([p[0] for p in front], [p[1] for p in front], color=colors[agent], alpha=0.6)
        ax.set_xlabel(f"{metric} ratio (compressed / dense)")
        ax.set_ylabel("accuracy (test if measured, else search)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
