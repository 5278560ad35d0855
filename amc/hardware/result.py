"""Result records of the hardware model: the cost of one layer and of a whole model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Bound = Literal["compute", "memory", "unknown"]


@dataclass(frozen=True, slots=True)
class LayerCost:
    """Latency and energy of one (pruned, quantized) layer on one accelerator.

    Attributes:
        name: the layer's name.
        cycles: accelerator cycles including memory stalls and the per-layer prologue.
        compute_cycles: cycles of the compute array alone (what SCALE-Sim calls compute cycles).
        latency_s: wall time, ``cycles / frequency``.
        compute_s: compute-only time.
        memory_s: DRAM transfer time, ``dram_bytes / bandwidth``.
        energy_j: total energy, the sum of the four parts below.
        mac_energy_j: arithmetic.
        sram_energy_j: on-chip buffer traffic.
        dram_energy_j: off-chip traffic.
        static_energy_j: leakage, ``static power x latency``.
        bound: ``"compute"`` or ``"memory"`` (whichever time is larger); ``"unknown"`` from measured tables.
        utilisation: useful MACs / (peak MACs per cycle at this precision x cycles).
        macs: useful multiply-accumulates.
        dram_bytes: off-chip bytes moved, with re-fetches when a tile does not fit on chip.
        sram_bytes: on-chip buffer bytes moved.
        w_bits: weight bits as run (32 replaced by the accelerator's native width).
        a_bits: activation bits as run.
    """

    name: str
    cycles: int
    compute_cycles: int
    latency_s: float
    compute_s: float
    memory_s: float
    energy_j: float
    mac_energy_j: float
    sram_energy_j: float
    dram_energy_j: float
    static_energy_j: float
    bound: Bound
    utilisation: float
    macs: int
    dram_bytes: float
    sram_bytes: float
    w_bits: int
    a_bits: int

    @property
    def arithmetic_intensity(self) -> float:
        """Operations (2 per MAC) per DRAM byte."""
        return 2.0 * self.macs / self.dram_bytes if self.dram_bytes > 0 else float("inf")

    @property
    def throughput_ops(self) -> float:
        """Achieved operations per second (2 per MAC)."""
        return 2.0 * self.macs / self.latency_s if self.latency_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Totals over a model's layers, plus the per-layer costs.

    Attributes:
        latency_s: sum of layer latencies (layers run one after another).
        energy_j: total energy.
        cycles: total cycles.
        macs: useful multiply-accumulates.
        dram_bytes: off-chip bytes.
        mac_energy_j: arithmetic energy.
        sram_energy_j: on-chip buffer energy.
        dram_energy_j: off-chip energy.
        static_energy_j: leakage energy.
        layers: the per-layer costs, in model order.
    """

    latency_s: float
    energy_j: float
    cycles: int
    macs: int
    dram_bytes: float
    mac_energy_j: float
    sram_energy_j: float
    dram_energy_j: float
    static_energy_j: float
    layers: tuple[LayerCost, ...]

    @classmethod
    def from_layers(cls, layers: Sequence[LayerCost]) -> ModelCost:
        """Sum per-layer costs.

        Args:
            layers: the layer costs, in model order.
        """
        lat = en = mac_e = sram_e = dram_e = stat_e = dram_b = 0.0
        cyc = macs = 0
        for c in layers:
            lat += c.latency_s
            en += c.energy_j
            cyc += c.cycles
            macs += c.macs
            dram_b += c.dram_bytes
            mac_e += c.mac_energy_j
            sram_e += c.sram_energy_j
            dram_e += c.dram_energy_j
            stat_e += c.static_energy_j
        return cls(lat, en, cyc, macs, dram_b, mac_e, sram_e, dram_e, stat_e, tuple(layers))
