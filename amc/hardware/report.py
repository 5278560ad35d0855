"""Per-layer hardware report: policy files, the printed table, and the roofline / latency plots.

Used by ``python -m amc.hardware`` (:mod:`amc.hardware.__main__`), and usable on its own::

    hw = HardwareModel(load_preset("bitfusion_edge"), graph.units)
    before = hw.model_cost()
    after = hw.model_cost(*policy_lists(load_policy(path, graph.units), graph.units))
    print(format_table(hw, before))
    plot_roofline(hw, [("dense", before), ("policy", after)], out_dir / "roofline.png")
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amc.errors import AmcError
from amc.hardware.model import CostModelBase, HardwareModel
from amc.hardware.result import LayerCost, ModelCost
from amc.hardware.spec import FLOAT_BITS, LayerSpec, check_bits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitPolicy:
    """Kept channels and bit widths of one unit.

    Attributes:
        name: the unit's module name.
        in_channels: input channels kept.
        out_channels: output channels kept.
        w_bits: weight bits (1..16, or 32 for unquantized).
        a_bits: activation bits.
    """

    name: str
    in_channels: int
    out_channels: int
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS


def load_policy(path: str | Path, units: Sequence[LayerSpec]) -> list[UnitPolicy]:
    """Read a policy file ``{"units": [{"name", "in_channels", "out_channels", "w_bits", "a_bits"}, ...]}``.

    A search's ``best_policy.json`` (the same list under ``"policy"``) or its run directory also works.

    Units are matched by name; a unit the file does not list stays dense and unquantized.

    Args:
        path: the JSON file.
        units: the model's units, in forward order.

    Returns:
        One :class:`UnitPolicy` per unit, in the units' order.
    """
    path = Path(path).expanduser()
    if path.is_dir():  # a search run directory
        path = path / "best_policy.json"
    if not path.is_file():
        raise AmcError(f"policy file {path} not found; pass policy=<path to a JSON policy>")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AmcError(f"policy {path} is not valid JSON ({exc.msg}, line {exc.lineno}); fix it") from None
    if isinstance(doc, dict) and isinstance(doc.get("policy"), dict):  # amc.train's best_policy.json
        doc = doc["policy"]
    entries = doc.get("units") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise AmcError(f'policy {path} needs {{"units": [...]}} (one entry per unit); see docs/hardware.md')
    by_name = {str(u.name): u for u in units}
    given: dict[str, UnitPolicy] = {}
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e:
            raise AmcError(f"policy file {path}: entry {k} needs a 'name' naming a unit of the model")
        name = str(e["name"])
        unit = by_name.get(name)
        if unit is None:
            raise AmcError(f"policy file {path}: unit {name!r} is not in the model; its units are {', '.join(by_name)}")
        try:
            pol = UnitPolicy(
                name,
                int(e.get("in_channels", unit.in_channels)),
                int(e.get("out_channels", unit.out_channels)),
                check_bits(int(e.get("w_bits", FLOAT_BITS)), f"{name}.w_bits"),
                check_bits(int(e.get("a_bits", FLOAT_BITS)), f"{name}.a_bits"),
            )
        except (TypeError, ValueError):
            raise AmcError(f"policy {path}: unit {name!r} has a non-integer value; use integers") from None
        for field, kept, dense in (
            ("in_channels", pol.in_channels, unit.in_channels),
            ("out_channels", pol.out_channels, unit.out_channels),
        ):
            if not 1 <= kept <= dense:
                raise AmcError(f"policy file {path}: {name}.{field}={kept} must be in 1..{dense}")
        given[name] = pol
    missing = [str(u.name) for u in units if str(u.name) not in given]
    if missing:
        log.warning(
            "policy %s does not list %d unit(s) (kept dense, unquantized): %s", path, len(missing), ", ".join(missing)
        )
    return [given.get(str(u.name), UnitPolicy(str(u.name), u.in_channels, u.out_channels)) for u in units]


def policy_lists(policy: Sequence[UnitPolicy]) -> tuple[list[int], list[int], list[int], list[int]]:
    """The four per-unit lists :meth:`HardwareModel.model_cost` takes.

    Args:
        policy: one entry per unit.
    """
    return (
        [p.in_channels for p in policy],
        [p.out_channels for p in policy],
        [p.w_bits for p in policy],
        [p.a_bits for p in policy],
    )


def _energy_cells(c: LayerCost | ModelCost) -> list[object]:
    return [
        f"{c.macs / 1e6:.3f}",
        c.cycles,
        f"{c.latency_s * 1e6:.2f}",
        f"{c.energy_j * 1e6:.3f}",
        f"{c.mac_energy_j * 1e6:.3f}",
        f"{c.sram_energy_j * 1e6:.3f}",
        f"{c.dram_energy_j * 1e6:.3f}",
        f"{c.static_energy_j * 1e6:.3f}",
    ]


def table_rows(cost: ModelCost, policy: Sequence[UnitPolicy] | None = None) -> list[list[object]]:
    """Rows of the per-layer table (plus a total row).

    Args:
        cost: the model cost.
        policy: the policy it was computed for (None: dense, unquantized).
    """
    rows: list[list[object]] = []
    for i, c in enumerate(cost.layers):
        chans = f"{policy[i].in_channels}/{policy[i].out_channels}" if policy else ""
        rows.append(
            [i, c.name, chans, f"{c.w_bits}/{c.a_bits}", *_energy_cells(c), c.bound, f"{100 * c.utilisation:.1f}"]
        )
    rows.append(["", "total", "", "", *_energy_cells(cost), "", ""])
    return rows


def _num(x: float) -> float:
    return 0.0 if math.isnan(x) else x


HEADERS = [
    "#",
    "layer",
    "c_in/c_out",
    "w/a bits",
    "MMACs",
    "cycles",
    "latency us",
    "energy uJ",
    "MAC uJ",
    "SRAM uJ",
    "DRAM uJ",
    "static uJ",
    "bound",
    "util %",
]


def format_table(cost: ModelCost, policy: Sequence[UnitPolicy] | None = None) -> str:
    """The per-layer table as text.

    Args:
        cost: the model cost.
        policy: the policy it was computed for (None: dense, unquantized).
    """
    from tabulate import tabulate

    return tabulate(table_rows(cost, policy), headers=HEADERS, disable_numparse=True)


def plot_roofline(model: CostModelBase, runs: Sequence[tuple[str, ModelCost]], path: str | Path) -> Path:
    """Per-layer roofline scatter: arithmetic intensity vs achieved throughput, with a roof per precision.

    Args:
        model: the hardware model (its accelerator draws the roofs; tables draw none).
        runs: (label, cost) pairs, e.g. dense and a policy.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    intensities = [c.arithmetic_intensity for _, cost in runs for c in cost.layers if c.dram_bytes > 0]
    lo = max(min(intensities, default=1.0) / 4, 1e-2)
    hi = max(intensities, default=100.0) * 4
    acc = getattr(model, "accelerator", None)
    if isinstance(model, HardwareModel) and acc is not None:
        xs = np.logspace(np.log10(lo), np.log10(hi), 200)
        bw = acc.dram_bandwidth_bytes_per_s
        for bits in acc.roof_precisions():
            peak = acc.peak_ops_per_s(bits, bits)
            label = "native" if bits == FLOAT_BITS else f"{bits}-bit"
            ax.plot(xs, np.minimum(peak, xs * bw), lw=1.2, label=f"roof {label} ({peak / 1e9:.3g} GOPS)")
    markers = "os^Dv"
    for k, (label, cost) in enumerate(runs):
        pts = [(c.arithmetic_intensity, c.throughput_ops, i) for i, c in enumerate(cost.layers) if c.dram_bytes > 0]
        if not pts:
            continue
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)], s=28, label=label, zorder=3
        )
        for x, y, i in pts:
            ax.annotate(str(i), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (ops / DRAM byte)")
    ax.set_ylabel("achieved throughput (ops / s)")
    ax.set_title(f"per-layer roofline: {getattr(acc, 'name', 'table')}")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_breakdown(runs: Sequence[tuple[str, ModelCost]], path: str | Path) -> Path:
    """Stacked per-layer latency bars (compute, memory stall, prologue), one bar per run side by side.

    Latency is ``max(compute, memory) + prologue``, so the memory part drawn is the stall beyond compute.

    Args:
        runs: (label, cost) pairs, e.g. dense ("before") and a policy ("after").
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_layers = max(len(cost.layers) for _, cost in runs)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n_layers + 2), 4.5))
    x = np.arange(n_layers)
    hatches = ["", "//", "..", "xx"]
    for k, (label, cost) in enumerate(runs):
        # Measured tables may lack the compute/memory split (NaN): the whole latency is then "other".
        comp = np.array([min(_num(c.compute_s), c.latency_s) for c in cost.layers])
        mem = np.array([max(0.0, _num(c.memory_s) - _num(c.compute_s)) for c in cost.layers])
        total = np.array([c.latency_s for c in cost.layers])
        mem = np.minimum(mem, total - comp)
        other = np.maximum(0.0, total - comp - mem)
        pos = x[: len(cost.layers)] - 0.4 + width * (k + 0.5)
        hatch = hatches[k % len(hatches)]
        ax.bar(pos, comp * 1e6, width, color="tab:blue", hatch=hatch, edgecolor="white", label=f"{label}: compute")
        ax.bar(
            pos,
            mem * 1e6,
            width,
            bottom=comp * 1e6,
            color="tab:orange",
            hatch=hatch,
            edgecolor="white",
            label=f"{label}: memory stall",
        )
        ax.bar(
            pos,
            other * 1e6,
            width,
            bottom=(comp + mem) * 1e6,
            color="tab:gray",
            hatch=hatch,
            edgecolor="white",
            label=f"{label}: prologue / other",
        )
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("latency (us)")
    ax.set_title("per-layer latency: " + " vs ".join(label for label, _ in runs))
    ax.legend(fontsize=7, ncol=len(runs))
    ax.grid(True, axis="y", lw=0.3, alpha=0.5)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
