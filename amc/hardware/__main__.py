"""``python -m amc.hardware model=<name> hardware=<preset> [policy=<file>]``: per-layer hardware report.

Prints the per-layer table (MACs, cycles, latency, energy split, bound, utilisation) of the model dense and
unquantized, and under the policy when one is given, and writes ``roofline.png`` and
``latency_breakdown.png`` to the Hydra run directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from amc.cli import hydra_entry, run_cli
from amc.errors import AmcError
from amc.hardware.model import HardwareModel
from amc.hardware.presets import build_accelerator
from amc.hardware.report import (
    UnitPolicy,
    format_table,
    load_policy,
    plot_latency_breakdown,
    plot_roofline,
    policy_lists,
)
from amc.hardware.result import ModelCost
from amc.utils import format_si

log = logging.getLogger("amc.hardware")


def hardware_report(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, ModelCost]:
    """Build the model's graph, cost it on the preset, print the tables and write the plots.

    Args:
        cfg: the composed ``hardware_report`` config.
        out_dir: where the plots go (None: the Hydra run directory).

    Returns:
        ``{"dense": cost}`` plus ``{"policy": cost}`` when a policy file is given.
    """
    from amc.graph import build_graph
    from amc.pretrain import arch_spec

    accelerator = build_accelerator(cfg.hardware)
    data = instantiate(cfg.data)
    model = instantiate(arch_spec(cfg.model))
    graph = build_graph(model, data.input_shape, check_routing=False)  # units only
    hw = HardwareModel(accelerator, graph.units, batch=cfg.get("batch"))
    policy = load_policy(cfg.policy, graph.units) if cfg.get("policy") else None  # a bad file fails before any table
    if policy is not None:
        check_channel_chain(policy, graph, cfg.policy)
    about = {**accelerator.describe(), "batch": hw.batch}  # batch= on the command line replaces the preset's
    print("hardware: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in about.items()))
    print(f"model: {type(model).__name__}, input {tuple(data.input_shape)}, {len(graph.units)} units, batch {hw.batch}")
    dense = hw.model_cost()
    results = {"dense": dense}
    print("\ndense, unquantized (float layers are costed at the hardware's native bits: the w/a bits column):")
    print(format_table(dense, [UnitPolicy(str(u.name), u.in_channels, u.out_channels) for u in graph.units]))
    if policy is not None:
        after = hw.model_cost(*policy_lists(policy))
        results["policy"] = after
        print(f"\npolicy {cfg.policy}:")
        print(format_table(after, policy))
        print(
            f"\nlatency {format_si(dense.latency_s, 's')} -> {format_si(after.latency_s, 's', dense.latency_s)} "
            f"({dense.latency_s / after.latency_s:.2f}x), energy {format_si(dense.energy_j, 'J')} -> "
            f"{format_si(after.energy_j, 'J', dense.energy_j)} ({dense.energy_j / after.energy_j:.2f}x)"
        )
    if cfg.get("plots", True):
        out = Path(out_dir) if out_dir is not None else Path(HydraConfig.get().runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        runs = [("dense", dense)] + ([("policy", results["policy"])] if "policy" in results else [])
        roof = plot_roofline(hw, runs, out / "roofline.png")
        bars = plot_latency_breakdown(runs, out / "latency_breakdown.png")
        log.info("wrote %s and %s", roof, bars)
    return results


def check_channel_chain(policy: Sequence[UnitPolicy], graph: Any, path: Any) -> None:
    """Refuse a policy whose channel counts do not chain through the model (it would be mis-costed).

    The units that produce one channel group (a residual sum, a concatenation's part) must keep the same
    count, and each unit must read what the units before it keep, as the search counts it
    (:meth:`amc.cost.CostModel.unit_channels`). A search's own policy always chains; a hand-written one
    may not.

    Args:
        policy: one entry per unit (:func:`load_policy`).
        graph: the model's :class:`amc.graph.ModelGraph`.
        path: the policy file, for the message.

    Raises:
        AmcError: naming the first unit that breaks the chain and the count it needs.
    """
    kept = graph.full_channels()
    for g in graph.groups:
        counts = {int(policy[i].out_channels) for i in g.producers}
        if len(counts) > 1:
            names = ", ".join(str(graph.units[i].name) for i in g.producers)
            raise AmcError(
                f"policy {path}: {names} write one channel group (summed or shared) but keep {sorted(counts)} "
                "output channels; give them one out_channels"
            )
        if counts:
            kept[g.index] = counts.pop()
    from amc.cost import CostModel

    c_in, _ = CostModel(graph).unit_channels(kept)
    for u, pol, want in zip(graph.units, policy, c_in.tolist()):
        if int(pol.in_channels) != want:
            raise AmcError(
                f"policy {path}: {u.name}.in_channels={pol.in_channels}, but the units before it keep {want} of "
                f"its inputs; set in_channels={want} (or list those units with their dense out_channels)"
            )


@hydra.main(version_base="1.3", config_path="pkg://amc.conf", config_name="hardware_report")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    run_cli(hardware_report, cfg)


main = hydra_entry(hydra_main)  # python -m amc.X and the amc-X console script


if __name__ == "__main__":
    main()
