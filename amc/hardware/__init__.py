"""Fast analytical latency/energy model of DNN accelerators, with presets and lookup tables.

Typical use from the search environment::

    from amc.hardware import HardwareModel, load_preset

    hw = HardwareModel(load_preset("bitfusion_edge"), graph.units)
    layer = hw.layer_cost(i, c_in, c_out, w_bits, a_bits)      # LayerCost, cached per query
    total = hw.model_cost(c_in_list, c_out_list, w_bits_list, a_bits_list)  # ModelCost

See ``docs/hardware.md`` for the model, the formulas and the sources of every preset number.
"""

from amc.hardware.accelerators import (
    Accelerator,
    BitFusionArray,
    BitSerialArray,
    FixedPrecisionNPU,
    GpuRoofline,
    RowStationaryArray,
    SystolicArray,
)
from amc.hardware.energy import EnergyModel
from amc.hardware.model import CostModelBase, HardwareModel
from amc.hardware.presets import build_accelerator, list_presets, load_preset
from amc.hardware.result import LayerCost, ModelCost
from amc.hardware.spec import VALID_BITS, Gemm, Layer, LayerSpec, lower, round_channels
from amc.hardware.tables import (
    CostTable,
    TableHardwareModel,
    build_table,
    channel_grid,
    load_table,
    save_table,
)

__all__ = [
    "VALID_BITS",
    "Accelerator",
    "BitFusionArray",
    "BitSerialArray",
    "CostModelBase",
    "CostTable",
    "EnergyModel",
    "FixedPrecisionNPU",
    "Gemm",
    "GpuRoofline",
    "HardwareModel",
    "Layer",
    "LayerCost",
    "LayerSpec",
    "ModelCost",
    "RowStationaryArray",
    "SystolicArray",
    "TableHardwareModel",
    "build_accelerator",
    "build_table",
    "channel_grid",
    "list_presets",
    "load_preset",
    "load_table",
    "lower",
    "round_channels",
    "save_table",
]
