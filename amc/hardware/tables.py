"""HAQ-style lookup tables: latency and energy per [unit, c_in, c_out, w_bits, a_bits], saved and loaded.

A table is built from any cost model (usually :class:`~amc.hardware.model.HardwareModel`) for one model's
units, saved as ``.npz`` (NumPy arrays plus a JSON header; never pickle) or ``.json``, and loaded back as a
:class:`TableHardwareModel` with the same ``layer_cost`` / ``model_cost`` interface. Users who measure
their own hardware write the same file layout with their numbers.

Axes per unit: ``c_in`` and ``c_out`` grids of kept-channel counts (multiples of the preset's channel
step, at most ``max_points`` each, always ending at the dense count) and the bit axis ``(1..8, 32)`` for
both weights and activations. A query between grid points takes the next larger grid point (a
conservative, never-optimistic lookup).

File layout (``.npz``): ``header`` is a 0-d unicode array holding JSON ``{"format": "amc.hardware.table",
"version": 1, "accelerator": str, "batch": int, "frequency_hz": float | null, "bits": [...], "units":
[layer signatures]}``; per unit ``i``: ``u{i}_c_in``, ``u{i}_c_out`` (int64), ``u{i}_latency_s`` and
``u{i}_energy_j`` (float64, shape ``[len(c_in), len(c_out), len(bits), len(bits)]``), optionally
``u{i}_dram_bytes``, ``u{i}_compute_s``, ``u{i}_memory_s``, ``u{i}_utilisation`` of the same shape. The
``.json`` layout is the header with a ``"tables"`` list of the same per-unit fields as nested lists.
"""

from __future__ import annotations

import io
import json
import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amc.errors import AmcError
from amc.hardware.model import CostModelBase
from amc.hardware.result import LayerCost
from amc.hardware.spec import TABLE_BITS, LayerSpec, layer_signature, lower
from amc.utils import atomic_write_bytes

FORMAT = "amc.hardware.table"
VERSION = 1
REQUIRED = ("latency_s", "energy_j")
OPTIONAL = ("dram_bytes", "compute_s", "memory_s", "utilisation")


@dataclass
class UnitTable:
    """Cost arrays of one unit.

    Attributes:
        c_in: ascending kept input-channel grid.
        c_out: ascending kept output-channel grid.
        arrays: field name -> array of shape ``[len(c_in), len(c_out), len(bits), len(bits)]``
            (``latency_s`` and ``energy_j`` always present).
    """

    c_in: list[int]
    c_out: list[int]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CostTable:
    """A whole model's lookup table.

    Attributes:
        accelerator: name of the hardware the numbers describe.
        batch: images per inference.
        bits: the bit axis shared by weights and activations.
        units: layer signatures (:func:`~amc.hardware.spec.layer_signature`) the table was made for.
        tables: one :class:`UnitTable` per unit.
        frequency_hz: clock for converting latency to cycles (None when measured).
    """

    accelerator: str
    batch: int
    bits: list[int]
    units: list[dict[str, object]]
    tables: list[UnitTable]
    frequency_hz: float | None = None

    def header(self) -> dict[str, object]:
        """The JSON header of the file."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "accelerator": self.accelerator,
            "batch": self.batch,
            "frequency_hz": self.frequency_hz,
            "bits": list(self.bits),
            "units": self.units,
        }


def channel_grid(full: int, multiple: int, max_points: int) -> list[int]:
    """Kept-channel grid for one axis: multiples of a step, at most ``max_points``, ending at ``full``.

    The step is the smallest multiple of ``multiple`` that needs no more than ``max_points`` points.

    Args:
        full: the dense channel count.
        multiple: the hardware's channel step.
        max_points: the most grid points.
    """
    if max_points < 1:
        raise AmcError(f"max_points={max_points} must be >= 1")
    multiple = max(1, int(multiple))
    step = multiple * max(1, -(-full // (multiple * max_points)))
    grid = list(range(step, full, step))
    return grid + [int(full)]


def build_table(
    cost_model: CostModelBase,
    *,
    max_points: int = 8,
    bits: Sequence[int] = TABLE_BITS,
    multiple: int | None = None,
) -> CostTable:
    """Tabulate a cost model for its units.

    Args:
        cost_model: usually a :class:`~amc.hardware.model.HardwareModel`.
        max_points: grid points per channel axis (the dense count is always one).
        bits: bit axis for weights and activations.
        multiple: channel step of the grids (None: the cost model's ``channel_multiple``).
    """
    bits = [int(b) for b in bits]
    step = int(multiple or cost_model.channel_multiple)
    tables = []
    for i, unit in enumerate(cost_model.units):
        g_in = channel_grid(int(unit.in_channels), step, max_points)
        g_out = channel_grid(int(unit.out_channels), step, max_points)
        shape = (len(g_in), len(g_out), len(bits), len(bits))
        arrays = {name: np.zeros(shape, dtype=np.float64) for name in (*REQUIRED, *OPTIONAL)}
        for a_i, ci in enumerate(g_in):
            for b_i, co in enumerate(g_out):
                for w_i, w in enumerate(bits):
                    for x_i, a in enumerate(bits):
                        c = cost_model.layer_cost(i, ci, co, w, a)
                        idx = (a_i, b_i, w_i, x_i)
                        arrays["latency_s"][idx] = c.latency_s
                        arrays["energy_j"][idx] = c.energy_j
                        arrays["dram_bytes"][idx] = c.dram_bytes
                        arrays["compute_s"][idx] = c.compute_s
                        arrays["memory_s"][idx] = c.memory_s
                        arrays["utilisation"][idx] = c.utilisation
        tables.append(UnitTable(g_in, g_out, arrays))
    acc = getattr(cost_model, "accelerator", None)
    return CostTable(
        accelerator=str(getattr(acc, "name", "unknown")),
        batch=int(getattr(cost_model, "batch", 1)),
        bits=bits,
        units=[layer_signature(u) for u in cost_model.units],
        tables=tables,
        frequency_hz=float(acc.frequency_hz) if acc is not None else None,
    )


def save_table(table: CostTable, path: str | Path) -> Path:
    """Write a table as ``.npz`` or ``.json`` (by the file's extension).

    Args:
        table: the table.
        path: destination ending in ``.npz`` or ``.json``.
    """
    path = Path(path)
    if path.suffix == ".json":
        doc = dict(table.header())
        doc["tables"] = [
            {"c_in": t.c_in, "c_out": t.c_out, **{k: v.tolist() for k, v in t.arrays.items()}} for t in table.tables
        ]
        atomic_write_bytes(path, (json.dumps(doc) + "\n").encode())
        return path
    if path.suffix != ".npz":
        raise AmcError(f"table file {path} must end in .npz or .json")
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(table.header()))}
    for i, t in enumerate(table.tables):
        arrays[f"u{i}_c_in"] = np.asarray(t.c_in, dtype=np.int64)
        arrays[f"u{i}_c_out"] = np.asarray(t.c_out, dtype=np.int64)
        for k, v in t.arrays.items():
            arrays[f"u{i}_{k}"] = np.asarray(v, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _check_header(header: dict[str, object], path: Path) -> None:
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise AmcError(f"{path} is not an amc hardware table (format {FORMAT} v{VERSION}); rebuild it with build_table")


def _unit_table(raw: dict[str, object], n_bits: int, path: Path, i: int) -> UnitTable:
    try:
        c_in = [int(x) for x in raw["c_in"]]  # type: ignore[union-attr]
        c_out = [int(x) for x in raw["c_out"]]  # type: ignore[union-attr]
    except KeyError as exc:
        raise AmcError(f"{path}: unit {i} lacks {exc}; every unit needs c_in and c_out grids") from None
    if c_in != sorted(set(c_in)) or c_out != sorted(set(c_out)) or not c_in or not c_out:
        raise AmcError(f"{path}: unit {i} channel grids must be non-empty and strictly ascending")
    shape = (len(c_in), len(c_out), n_bits, n_bits)
    arrays = {}
    for name in (*REQUIRED, *OPTIONAL):
        if name not in raw:
            if name in REQUIRED:
                raise AmcError(f"{path}: unit {i} lacks {name!r}; tables need latency_s and energy_j")
            continue
        arr = np.asarray(raw[name], dtype=np.float64)
        if arr.shape != shape:
            raise AmcError(f"{path}: unit {i} {name} has shape {arr.shape}, expected {shape} (c_in, c_out, bits, bits)")
        arrays[name] = arr
    return UnitTable(c_in, c_out, arrays)


def load_table(path: str | Path) -> CostTable:
    """Read a table written by :func:`save_table` (or by hand in the same layout).

    Args:
        path: a ``.npz`` or ``.json`` table.
    """
    path = Path(path)
    if not path.is_file():
        raise AmcError(f"hardware table {path} not found; build one with amc.hardware.build_table and save_table")
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AmcError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or regenerate it") from None
        _check_header(doc, path)
        raw_tables = doc.get("tables", [])
        header = doc
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "header" not in npz:
                raise AmcError(f"{path} has no header; it is not an amc hardware table")
            header = json.loads(str(npz["header"]))
            _check_header(header, path)
            raw_tables = []
            for i in range(len(header["units"])):
                prefix = f"u{i}_"
                raw_tables.append({k[len(prefix) :]: npz[k] for k in npz.files if k.startswith(prefix)})
    else:
        raise AmcError(f"table file {path} must end in .npz or .json")
    bits = [int(b) for b in header["bits"]]
    units = list(header["units"])
    if len(raw_tables) != len(units):
        raise AmcError(f"{path}: header lists {len(units)} units but the file has {len(raw_tables)} tables")
    tables = [_unit_table(raw, len(bits), path, i) for i, raw in enumerate(raw_tables)]
    freq = header.get("frequency_hz")
    return CostTable(
        accelerator=str(header.get("accelerator", "unknown")),
        batch=int(header.get("batch", 1)),
        bits=bits,
        units=units,
        tables=tables,
        frequency_hz=None if freq is None else float(freq),
    )


class TableHardwareModel(CostModelBase):
    """Answers ``layer_cost`` / ``model_cost`` from a lookup table instead of the analytical model.

    Args:
        table: a :class:`CostTable`, or a path to a saved one.
        units: the model's units; must match the ones the table was built for.

    Raises:
        AmcError: if the table was made for a different model (unit count or any layer shape differs).
    """

    def __init__(self, table: CostTable | str | Path, units: Iterable[LayerSpec]) -> None:
        super().__init__(units)
        if not isinstance(table, CostTable):
            table = load_table(table)
        self.table = table
        if len(table.units) != len(self.units):
            raise AmcError(
                f"hardware table for {table.accelerator!r} has {len(table.units)} units but the model has "
                f"{len(self.units)}; build the table for this model (amc.hardware.build_table)"
            )
        for i, (want, unit) in enumerate(zip(table.units, self.units, strict=True)):
            have = layer_signature(unit)
            diff = [k for k in have if want.get(k) != have[k]]
            if diff:
                k = diff[0]
                raise AmcError(
                    f"hardware table does not match the model at unit {i} ({have['name']}): {k} is "
                    f"{have[k]!r} in the model but {want.get(k)!r} in the table;"
                    f" build the table for this model"
                )
        self.batch = table.batch
        self._bit_index = {b: j for j, b in enumerate(table.bits)}

    def _compute(self, i: int, c_in: int, c_out: int, w_bits: int, a_bits: int) -> LayerCost:
        t = self.table.tables[i]
        name = str(self.units[i].name)
        ii = bisect_left(t.c_in, c_in)
        jj = bisect_left(t.c_out, c_out)
        if ii == len(t.c_in) or jj == len(t.c_out):
            raise AmcError(
                f"unit {i} ({name}): c_in={c_in}, c_out={c_out} exceed the table's grid "
                f"(max {t.c_in[-1]}, {t.c_out[-1]}); keep at most the dense channel counts"
            )
        try:
            idx = (ii, jj, self._bit_index[w_bits], self._bit_index[a_bits])
        except KeyError:
            raise AmcError(
                f"bits ({w_bits}, {a_bits}) are not in the table's bit axis {self.table.bits}; "
                "rebuild it with those bits"
            ) from None
        arr = t.arrays
        latency = float(arr["latency_s"][idx])
        energy = float(arr["energy_j"][idx])
        compute_s = float(arr["compute_s"][idx]) if "compute_s" in arr else float("nan")
        memory_s = float(arr["memory_s"][idx]) if "memory_s" in arr else float("nan")
        if "compute_s" in arr and "memory_s" in arr:
            bound = "memory" if memory_s > compute_s else "compute"
        else:
            bound = "unknown"
        freq = self.table.frequency_hz
        cycles = int(round(latency * freq)) if freq else 0
        gemm = lower(self.units[i], t.c_in[ii], t.c_out[jj], self.batch)
        return LayerCost(
            name=name,
            cycles=cycles,
            compute_cycles=int(round(compute_s * freq)) if freq and not math.isnan(compute_s) else 0,
            latency_s=latency,
            compute_s=compute_s,
            memory_s=memory_s,
            energy_j=energy,
            mac_energy_j=0.0,
            sram_energy_j=0.0,
            dram_energy_j=0.0,
            static_energy_j=0.0,
            bound=bound,  # type: ignore[arg-type]
            utilisation=float(arr["utilisation"][idx]) if "utilisation" in arr else float("nan"),
            macs=gemm.macs,
            dram_bytes=float(arr["dram_bytes"][idx]) if "dram_bytes" in arr else float("nan"),
            sram_bytes=float("nan"),
            w_bits=w_bits,
            a_bits=a_bits,
        )

    @property
    def channel_multiple(self) -> int:
        """Smallest output-channel grid step over the units (1 when every grid is a single point)."""
        steps = [t.c_out[1] - t.c_out[0] for t in self.table.tables if len(t.c_out) > 1]
        return min(steps) if steps else 1
