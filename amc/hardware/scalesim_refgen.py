"""Regenerate ``tests/data/scalesim_refs.json``: compute-cycle references from SCALE-Sim v3.

SCALE-Sim pins ``numpy<2.3``, so it lives in its own virtual environment, and this module therefore uses
only the standard library (plus ``scalesim`` inside :func:`simulate`) so that interpreter can run it::

    python3 -m venv /tmp/scalesim && /tmp/scalesim/bin/pip install scalesim "numpy<2.3"
    /tmp/scalesim/bin/python amc/hardware/scalesim_refgen.py tests/data/scalesim_refs.json

Each reference is one layer run through SCALE-Sim's ``scalesim.scale_sim.scalesim`` with the exact config and
topology text stored next to the result, in estimate-bandwidth (``CALC``, stall-free) mode. The number the
tests compare against is SCALE-Sim's per-layer *compute cycles* (``COMPUTE_REPORT.csv`` column "Compute
Cycles"), summed over the per-channel layers SCALE-Sim makes of a depthwise layer. The test suite only reads
the JSON, so CI never needs SCALE-Sim.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

#: SCALE-Sim v3 config template; SRAM sizes are SCALE-Sim's ``configs/scale.cfg`` defaults (64 kB each) and
#: do not change compute cycles, only the memory traces SCALE-Sim skips here.
CONFIG_TEMPLATE = """[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight:    {rows}
ArrayWidth:     {cols}
IfmapSramSzkB:   64
FilterSramSzkB:  64
OfmapSramSzkB:   64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Bandwidth : 10
Dataflow : {dataflow}
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""

TOPOLOGY_HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"


@dataclass(frozen=True)
class RefCase:
    """One layer to simulate; field names follow :class:`amc.hardware.spec.LayerSpec`."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    in_hw: tuple[int, int]
    depthwise: bool
    rows: int
    cols: int
    dataflow: str

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output size with SCALE-Sim's (unpadded) rule ``ceil((H - R + s) / s)``."""
        return tuple(  # type: ignore[return-value]
            (h - k + s + s - 1) // s for h, k, s in zip(self.in_hw, self.kernel_size, self.stride, strict=True)
        )

    def topology(self) -> str:
        """SCALE-Sim conv topology CSV; a depthwise layer is named ``DP_...`` so SCALE-Sim splits it."""
        if self.stride[0] != self.stride[1]:
            raise ValueError("SCALE-Sim topologies take one stride for both axes")
        name = ("DP_" if self.depthwise else "") + self.name
        filters = 1 if self.depthwise else self.out_channels
        row = (
            f"{name}, {self.in_hw[0]}, {self.in_hw[1]}, {self.kernel_size[0]}, {self.kernel_size[1]}, "
            f"{self.in_channels}, {filters}, {self.stride[0]},"
        )
        return TOPOLOGY_HEADER + "\n" + row + "\n"

    def layer_dict(self) -> dict[str, object]:
        """The layer as plain data for the JSON file."""
        return {
            "name": self.name,
            "kind": self.kind,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "groups": self.in_channels if self.depthwise else 1,
            "in_hw": list(self.in_hw),
            "out_hw": list(self.out_hw),
            "depthwise": self.depthwise,
        }


def _conv(name: str, hw: int, k: int, s: int, cin: int, cout: int, rows: int, cols: int, df: str) -> RefCase:
    return RefCase(name, "conv", cin, cout, (k, k), (s, s), (hw, hw), False, rows, cols, df)


def _linear(name: str, cin: int, cout: int, rows: int, cols: int, df: str) -> RefCase:
    return RefCase(name, "linear", cin, cout, (1, 1), (1, 1), (1, 1), False, rows, cols, df)


def _dw(name: str, hw: int, k: int, s: int, c: int, rows: int, cols: int, df: str) -> RefCase:
    return RefCase(name, "conv", c, c, (k, k), (s, s), (hw, hw), True, rows, cols, df)


#: The layers simulated: the brief's 3x3/56x56/C_in 64 layer on 32x32 (re-checked), then other shapes,
#: strides, depthwise, linear, both dataflows and non-square arrays. Kept small so a run takes minutes.
CASES: tuple[RefCase, ...] = (
    *(_conv(f"brief_c{c}", 58, 3, 1, 64, c, 32, 32, "ws") for c in (16, 32, 33, 48, 64, 65, 96)),
    _conv("brief_c64", 58, 3, 1, 64, 64, 32, 32, "os"),
    _conv("c3x3_s1", 16, 3, 1, 32, 48, 32, 32, "ws"),
    _conv("c3x3_s1", 16, 3, 1, 32, 48, 32, 32, "os"),
    _conv("c3x3_s2", 29, 3, 2, 16, 40, 32, 32, "ws"),
    _conv("c3x3_s2", 29, 3, 2, 16, 40, 32, 32, "os"),
    _conv("c1x1", 28, 1, 1, 64, 100, 16, 64, "ws"),
    _conv("c1x1", 28, 1, 1, 64, 100, 16, 64, "os"),
    _conv("c5x5", 20, 5, 1, 8, 20, 8, 8, "ws"),
    _conv("c5x5", 20, 5, 1, 8, 20, 8, 8, "os"),
    _conv("c7x7_s2", 37, 7, 2, 3, 24, 64, 16, "ws"),
    _conv("c7x7_s2", 37, 7, 2, 3, 24, 64, 16, "os"),
    _conv("c3x3_deep", 9, 3, 1, 128, 130, 32, 32, "ws"),
    _conv("c3x3_deep", 9, 3, 1, 128, 130, 32, 32, "os"),
    _linear("fc256_120", 256, 120, 32, 32, "ws"),
    _linear("fc256_120", 256, 120, 32, 32, "os"),
    _linear("fc1000_10", 1000, 10, 16, 16, "ws"),
    _linear("fc1000_10", 1000, 10, 16, 16, "os"),
    _dw("dw3x3", 16, 3, 1, 8, 32, 32, "ws"),
    _dw("dw3x3", 16, 3, 1, 8, 32, 32, "os"),
    _dw("dw3x3_s2", 17, 3, 2, 6, 8, 8, "ws"),
    _dw("dw3x3_s2", 17, 3, 2, 6, 8, 8, "os"),
)


def simulate(case: RefCase, workdir: Path) -> dict[str, object]:
    """Run one case through SCALE-Sim and return its JSON record.

    Args:
        case: the layer, array and dataflow.
        workdir: scratch folder for SCALE-Sim's config, topology, layout and report files.
    """
    from scalesim.scale_sim import scalesim  # imported here: only SCALE-Sim's own venv has it

    run_name = f"{case.name}_{case.dataflow}_{case.rows}x{case.cols}"
    config = CONFIG_TEMPLATE.format(run_name=run_name, rows=case.rows, cols=case.cols, dataflow=case.dataflow)
    topology = case.topology()
    # SCALE-Sim v3 always reads a layout file; custom layouts are off, so its values are unused placeholders.
    n_rows = case.in_channels if case.depthwise else 1
    layout = "Layer name," + ",".join(f"f{i}" for i in range(20)) + ",\n"
    # Column 5 is the channel count SCALE-Sim uses to split a ``DP`` row per channel, as in the topology.
    values = ["1"] * 20
    values[4] = str(n_rows)
    layout += ("DP_" if case.depthwise else "") + case.name + "," + ",".join(values) + ",\n"
    cfg_path, topo_path, layout_path = workdir / "c.cfg", workdir / "t.csv", workdir / "l.csv"
    cfg_path.write_text(config)
    topo_path.write_text(topology)
    layout_path.write_text(layout)
    start = time.perf_counter()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
        sim = scalesim(
            save_disk_space=True,
            verbose=True,
            config=str(cfg_path),
            topology=str(topo_path),
            layout=str(layout_path),
        )
        sim.run_scale(top_path=str(workdir / "out"))
    text = buffer.getvalue()
    compute = [int(x) for x in re.findall(r"Compute cycles: (\d+)", text)]
    total = [int(x) for x in re.findall(r"Total cycles: (\d+)", text)]
    stalls = [int(x) for x in re.findall(r"Stall cycles: (\d+)", text)]
    if len(compute) != n_rows:
        raise RuntimeError(f"{run_name}: expected {n_rows} SCALE-Sim layers, got {len(compute)}")
    record = {
        "id": run_name,
        "layer": case.layer_dict(),
        "array": [case.rows, case.cols],
        "dataflow": case.dataflow,
        "compute_cycles": sum(compute),
        "total_cycles": sum(total),
        "stall_cycles": sum(stalls),
        "scalesim_layers": len(compute),
        "scalesim": {"config": config, "topology": topology},
    }
    log.info("%s: compute %d cycles (%.1f s)", run_name, sum(compute), time.perf_counter() - start)
    return record


def main(argv: list[str] | None = None) -> int:
    """Simulate every case in :data:`CASES` and write the JSON file named on the command line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "tests/data/scalesim_refs.json")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            records.append(simulate(case, Path(tmp)))
    doc = {
        "generator": "amc/hardware/scalesim_refgen.py",
        "scalesim_version": metadata.version("scalesim"),
        "mode": "InterfaceBandwidth CALC (estimate-bandwidth, stall-free); value = COMPUTE_REPORT 'Compute Cycles'",
        "batch": 1,
        "references": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    log.info("wrote %d references to %s", len(records), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
