"""Analytical accelerator models: compute cycles per dataflow, DRAM roofline, energy.

Every accelerator answers :meth:`Accelerator.cost` for a layer already lowered to a grouped matrix multiply
(:class:`~amc.hardware.spec.Gemm`). The subclasses only differ in how the array quantizes that multiply
into cycles (:meth:`Accelerator.compute_cycles`), what precision their datapath runs a (w_bits, a_bits)
pair at, and how operands are reused on chip. The shared pipeline is:

1. storage bits: 32 ("unquantized") becomes the preset's ``native_bits``; weights, inputs and outputs are
   stored bit-packed at their widths (outputs at the layer's activation width);
2. DRAM bytes: each tensor once when all three fit in on-chip SRAM, else the cheaper of keeping weights or
   inputs resident in half the SRAM and re-streaming the other operand once per resident block;
3. cycles = max(compute cycles, DRAM bytes / bytes per cycle) + per-layer prologue; the larger term names
   the bound;
4. energy = MACs x MAC energy at the datapath precision + SRAM bytes x SRAM energy + DRAM bytes x DRAM
   energy + static power x latency.

See ``docs/hardware.md`` for the formulas and the sources of every preset number.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from amc.errors import AmcError
from amc.hardware.energy import EnergyModel
from amc.hardware.result import LayerCost
from amc.hardware.spec import FLOAT_BITS, Gemm

#: (weight bits, activation bits, float bits) the datapath runs at; float bits 0 means integer.
Datapath = tuple[int, int, int]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise AmcError(f"accelerator parameter {name}={value!r} must be positive; fix the preset")


class Accelerator(ABC):
    """Base class: the shared roofline/energy pipeline around a dataflow-specific cycle count.

    ``max_bits`` (``None``: no limit) is the widest quantized width a preset can run; the environment
    refuses bit ranges beyond it instead of costing them at a width they would not run at.

    Args:
        name: preset name, for reports.
        frequency_hz: core clock.
        dram_bandwidth_gbps: off-chip bandwidth in GB/s (1e9 bytes per second).
        sram_kib: on-chip buffer capacity in KiB available to one layer's operands.
        prologue_cycles: fixed per-layer cost (configuration, DMA descriptors, kernel launch).
        static_power_w: leakage/idle power charged for the layer's latency.
        native_bits: width that "unquantized" (32) means on this accelerator.
        batch: images per inference the preset is evaluated at.
        energy: per-operation energies; a mapping is passed to :class:`EnergyModel`.
        packed_storage: store sub-native widths bit-packed in memory (False: at the datapath width).
        channel_multiple: override the natural channel step (:attr:`channel_multiple`).
    """

    kind: str = "abstract"
    max_bits: int | None = None

    def __init__(
        self,
        *,
        name: str,
        frequency_hz: float,
        dram_bandwidth_gbps: float,
        sram_kib: float,
        prologue_cycles: int = 0,
        static_power_w: float = 0.0,
        native_bits: int = 8,
        batch: int = 1,
        energy: EnergyModel | Mapping[str, Any] | None = None,
        packed_storage: bool = True,
        channel_multiple: int | None = None,
    ) -> None:
        _positive("frequency_hz", frequency_hz)
        _positive("dram_bandwidth_gbps", dram_bandwidth_gbps)
        _positive("sram_kib", sram_kib)
        _positive("batch", batch)
        if prologue_cycles < 0 or static_power_w < 0:
            raise AmcError(f"preset {name!r}: prologue_cycles and static_power_w must be >= 0")
        self.name = str(name)
        self.frequency_hz = float(frequency_hz)
        self.dram_bandwidth_gbps = float(dram_bandwidth_gbps)
        self.sram_kib = float(sram_kib)
        self.prologue_cycles = int(prologue_cycles)
        self.static_power_w = float(static_power_w)
        self.native_bits = int(native_bits)
        self.batch = int(batch)
        if energy is None:
            energy = EnergyModel()
        elif isinstance(energy, Mapping):
            try:
                energy = EnergyModel(**dict(energy))
            except TypeError as exc:
                raise AmcError(f"preset {name!r}: bad energy parameters ({exc}); see EnergyModel") from None
        self.energy: EnergyModel = energy
        self.packed_storage = bool(packed_storage)
        self._channel_multiple = None if channel_multiple is None else int(channel_multiple)
        # Derived constants used on every query.
        self.sram_bytes = self.sram_kib * 1024.0
        self.dram_bytes_per_cycle = self.dram_bandwidth_gbps * 1e9 / self.frequency_hz
        self._datapath_cache: dict[tuple[int, int], Datapath] = {}

    # ----------------------------------------------------------------------------------------------
    # What subclasses define
    # ----------------------------------------------------------------------------------------------
    @abstractmethod
    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        """Precision the compute units run a layer quantized to (w_bits, a_bits) at (32 = unquantized).

        Returns:
            (weight bits, activation bits, float bits); float bits is 16/32 for a float datapath, else 0.
        """

    @abstractmethod
    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        """Cycles of the compute array for a lowered layer at datapath precision ``dp`` (no memory)."""

    @abstractmethod
    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        """MACs per cycle the whole array can do at datapath precision ``dp``."""

    @abstractmethod
    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        """On-chip reuse as (tile_p, tile_k, tile_m): weights are re-read from SRAM once per ``tile_p``
        rows of P, inputs once per ``tile_m`` output channels, partial sums once per ``tile_k`` of K."""

    @property
    @abstractmethod
    def natural_channel_multiple(self) -> int:
        """Output-channel step at which the array's cycle count changes (e.g. the array width)."""

    # ----------------------------------------------------------------------------------------------
    # Shared pipeline
    # ----------------------------------------------------------------------------------------------
    @property
    def channel_multiple(self) -> int:
        """Channel step worth rounding pruned counts to (a preset's ``channel_multiple`` overrides)."""
        return self._channel_multiple or self.natural_channel_multiple

    def storage_bits(self, bits: int, datapath_bits: int) -> int:
        """Bits one stored element takes in memory.

        Args:
            bits: the requested width (32 = unquantized).
            datapath_bits: the width the compute units run it at.
        """
        if bits == FLOAT_BITS:
            return self.native_bits
        return bits if self.packed_storage else max(bits, datapath_bits)

    def resolve(self, w_bits: int, a_bits: int) -> Datapath:
        """Cached :meth:`datapath`."""
        key = (w_bits, a_bits)
        dp = self._datapath_cache.get(key)
        if dp is None:
            dp = self._datapath_cache[key] = self.datapath(w_bits, a_bits)
        return dp

    def dram_traffic(self, w_bytes: float, in_bytes: float, out_bytes: float) -> float:
        """Off-chip bytes for one layer, with re-fetch when the operands do not fit on chip.

        When weights, inputs and outputs together fit in SRAM each moves once. Otherwise half the SRAM
        holds a block of one operand while the other streams past it once per block; the cheaper of
        the two orders is used, and outputs are written once.

        Args:
            w_bytes: weight bytes.
            in_bytes: input activation bytes.
            out_bytes: output activation bytes.
        """
        total = w_bytes + in_bytes + out_bytes
        cap = self.sram_bytes
        if total <= cap:
            return total
        half = cap / 2.0
        weights_resident = w_bytes + in_bytes * _cdiv_f(w_bytes, half)
        inputs_resident = in_bytes + w_bytes * _cdiv_f(in_bytes, half)
        return out_bytes + min(weights_resident, inputs_resident)

    def cost(self, gemm: Gemm, w_bits: int, a_bits: int, name: str = "") -> LayerCost:
        """Latency and energy of a lowered layer.

        Args:
            gemm: the layer as a grouped matrix multiply (:func:`amc.hardware.spec.lower`).
            w_bits: weight bits, 1..16 or 32 (unquantized).
            a_bits: activation bits, 1..16 or 32.
            name: the layer's name, copied into the result.
        """
        dp = self.resolve(w_bits, a_bits)
        dw, da, fl = dp
        sw = self.storage_bits(w_bits, dw)
        sa = self.storage_bits(a_bits, da)
        w_bytes = gemm.w_elems * sw / 8.0
        in_bytes = gemm.in_elems * sa / 8.0
        out_bytes = gemm.out_elems * sa / 8.0
        dram = self.dram_traffic(w_bytes, in_bytes, out_bytes)

        compute = self.compute_cycles(gemm, dp)
        mem_cycles = int(-(-dram // self.dram_bytes_per_cycle))
        cycles = max(compute, mem_cycles) + self.prologue_cycles
        f = self.frequency_hz
        latency = cycles / f
        peak = self.peak_macs_per_cycle(dp)
        util = gemm.macs / (peak * cycles) if cycles > 0 else 0.0

        tp, tk, tm = self.reuse_tiles(gemm, dp)
        g, p, k, m = gemm.groups, gemm.p, gemm.k, gemm.m
        k_folds = -(-k // tk)
        en = self.energy
        sram = (
            w_bytes * -(-p // tp)
            + g * p * k * (sa / 8.0) * -(-m // tm)
            + gemm.out_elems * (sa / 8.0 + (k_folds - 1) * 2.0 * en.psum_bytes)
            + dram  # every off-chip byte is also written into / read out of the on-chip buffers
        )
        mac_e = gemm.macs * en.mac_pj(dw, da, fl) * 1e-12
        sram_e = sram * en.sram_pj_per_byte * 1e-12
        dram_e = dram * en.dram_pj_per_byte * 1e-12
        static_e = self.static_power_w * latency
        return LayerCost(
            name=name,
            cycles=cycles,
            compute_cycles=compute,
            latency_s=latency,
            compute_s=compute / f,
            memory_s=dram / (self.dram_bytes_per_cycle * f),
            energy_j=mac_e + sram_e + dram_e + static_e,
            mac_energy_j=mac_e,
            sram_energy_j=sram_e,
            dram_energy_j=dram_e,
            static_energy_j=static_e,
            bound="memory" if mem_cycles > compute else "compute",
            utilisation=util,
            macs=gemm.macs,
            dram_bytes=dram,
            sram_bytes=sram,
            w_bits=sw if fl == 0 else fl,
            a_bits=sa if fl == 0 else fl,
        )

    # ----------------------------------------------------------------------------------------------
    # Reporting helpers
    # ----------------------------------------------------------------------------------------------
    def peak_ops_per_s(self, w_bits: int, a_bits: int) -> float:
        """Peak operations per second (2 per MAC) at a precision (32 = unquantized)."""
        return 2.0 * self.peak_macs_per_cycle(self.resolve(w_bits, a_bits)) * self.frequency_hz

    @property
    def dram_bandwidth_bytes_per_s(self) -> float:
        """Off-chip bandwidth in bytes per second."""
        return self.dram_bandwidth_gbps * 1e9

    def roof_precisions(self) -> list[int]:
        """Distinct precisions (bits, equal for weights and activations) worth drawing a roof for."""
        # Label each roof by the widest precision that runs at its speed (BitFusion: 2, 4, 8 bits).
        seen: dict[float, int] = {}
        for b in (1, 2, 3, 4, 5, 6, 7, 8):
            seen[self.peak_ops_per_s(b, b)] = b
        seen.setdefault(self.peak_ops_per_s(FLOAT_BITS, FLOAT_BITS), FLOAT_BITS)
        return sorted(seen.values())

    def describe(self) -> dict[str, object]:
        """Key numbers of the preset, for report headers."""
        return {
            "name": self.name,
            "kind": self.kind,
            "frequency_MHz": self.frequency_hz / 1e6,
            "dram_GBps": self.dram_bandwidth_gbps,
            "sram_KiB": self.sram_kib,
            "peak_GOPS_native": self.peak_ops_per_s(FLOAT_BITS, FLOAT_BITS) / 1e9,
            "native_bits": self.native_bits,
            "batch": self.batch,
            "channel_multiple": self.channel_multiple,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _cdiv_f(a: float, b: float) -> float:
    return float(-(-a // b))


def _round_up_to(bits: int, choices: Sequence[int]) -> int:
    """Smallest choice >= bits (the largest choice when none is)."""
    for c in choices:
        if c >= bits:
            return c
    return choices[-1]


class SystolicArray(Accelerator):
    """A rows x cols systolic array with a weight- or output-stationary dataflow, cycle-exact to SCALE-Sim.

    Lowered as in SCALE-Sim v3 (``scalesim/compute/systolic_compute_{ws,os}.py``), per group:

    * weight stationary: K on rows, M on columns, P streamed;
      ``folds = ceil(K/rows) * ceil(M/cols)``, each fold ``2*rows + cols + P - 2`` cycles (weight load,
      skewed input fill, stream, drain), minus one overall: ``folds * (2R + C + P - 2) - 1``;
    * output stationary: P on rows, M on columns, K streamed;
      ``folds = ceil(P/rows) * ceil(M/cols)``, cycles ``folds * (R + C + K - 2) - 1``.

    Groups run one after another (SCALE-Sim simulates a depthwise layer as one layer per channel). The
    datapath is fixed at ``native_bits``; narrower operands only shrink memory traffic.

    Args:
        rows: array height.
        cols: array width.
        dataflow: ``"ws"`` or ``"os"``.
        **common: see :class:`Accelerator`.
    """

    kind = "systolic"

    def __init__(self, *, rows: int, cols: int, dataflow: str = "ws", **common: Any) -> None:
        super().__init__(**common)
        if dataflow not in ("ws", "os"):
            raise AmcError(f"preset {self.name!r}: dataflow={dataflow!r}; use 'ws' or 'os'")
        _positive("rows", rows)
        _positive("cols", cols)
        self.rows, self.cols, self.dataflow = int(rows), int(cols), dataflow
        self.kind = f"systolic_{dataflow}"

    @property
    def max_bits(self) -> int:
        """The datapath's width: a wider operand does not fit it (SCALE-Sim's words are one byte at 8)."""
        return self.native_bits

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        return (self.native_bits, self.native_bits, 0)

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        r, c = self.rows, self.cols
        if self.dataflow == "ws":
            folds = -(-gemm.k // r) * -(-gemm.m // c)
            per_group = folds * (2 * r + c + gemm.p - 2) - 1
        else:
            folds = -(-gemm.p // r) * -(-gemm.m // c)
            per_group = folds * (r + c + gemm.k - 2) - 1
        return gemm.groups * per_group

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        return float(self.rows * self.cols)

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        if self.dataflow == "ws":
            return gemm.p, self.rows, self.cols
        return self.rows, gemm.k, self.cols

    @property
    def natural_channel_multiple(self) -> int:
        return self.cols


class BitSerialArray(Accelerator):
    """BISMO-style bit-serial matrix multiply overlay (Umuroglu et al., FPL 2018).

    A ``dm x dn`` grid of dot-product units, each doing a ``dk``-bit binary dot product (AND + popcount)
    per cycle. A w-bit by a-bit product is ``w * a`` binary products (bit-plane pairs, shifted and added),
    so per group: ``cycles = w * a * ceil(M/dm) * ceil(K/dk) * ceil(P/dn) + ceil(M/dm) * ceil(P/dn) * o``
    with ``o`` the per-output-tile overhead (result write-back). Output stationary: each DPU accumulates
    one output over K.

    Args:
        dm: DPU rows (output channels in parallel).
        dk: binary dot-product width (elements of K per cycle).
        dn: DPU columns (output pixels in parallel).
        tile_overhead_cycles: cycles per output tile outside the binary products.
        **common: see :class:`Accelerator`.
    """

    kind = "bit_serial"

    def __init__(self, *, dm: int, dk: int, dn: int, tile_overhead_cycles: int = 0, **common: Any) -> None:
        super().__init__(**common)
        for n, v in (("dm", dm), ("dk", dk), ("dn", dn)):
            _positive(n, v)
        self.dm, self.dk, self.dn = int(dm), int(dk), int(dn)
        self.tile_overhead_cycles = int(tile_overhead_cycles)

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        w = self.native_bits if w_bits == FLOAT_BITS else w_bits
        a = self.native_bits if a_bits == FLOAT_BITS else a_bits
        return (w, a, 0)

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        tiles = -(-gemm.m // self.dm) * -(-gemm.p // self.dn)
        per_group = tiles * (dp[0] * dp[1] * -(-gemm.k // self.dk) + self.tile_overhead_cycles)
        return gemm.groups * per_group

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        return self.dm * self.dk * self.dn / float(dp[0] * dp[1])

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        return self.dn, gemm.k, self.dm

    @property
    def natural_channel_multiple(self) -> int:
        return self.dm


class BitFusionArray(Accelerator):
    """Bit Fusion (Sharma et al., ISCA 2018): a systolic array of Fusion Units built from 2-bit BitBricks.

    A Fusion Unit has 16 BitBricks (2x2-bit multipliers) and fuses them per layer: it computes
    ``floor(8/w') * floor(8/a')`` products per cycle with ``w' = max(w, 2)``, i.e. 1 at 8x8 bits, 4 at 4x4,
    16 at 2x2, 2 at 8x4. Because of the floor, 3 bits cost what 4 bits cost and 5-7 what 8 costs. Wider
    than 8 bits runs temporally (``ceil(w/8) * ceil(a/8)`` passes). The fused products of one unit are
    summed into one partial sum, so they extend the reduction: the array is weight stationary with
    ``rows * fused`` elements of K per column, cycles per group as :class:`SystolicArray` (ws) with
    ``K_eff = ceil(K / fused)``, times the temporal passes.

    Args:
        rows: Fusion Unit rows (reduction).
        cols: Fusion Unit columns (output channels).
        **common: see :class:`Accelerator`.
    """

    kind = "bit_fusion"
    _modes = (2, 4, 8, 16)

    def __init__(self, *, rows: int, cols: int, **common: Any) -> None:
        super().__init__(**common)
        _positive("rows", rows)
        _positive("cols", cols)
        self.rows, self.cols = int(rows), int(cols)

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        w = self.native_bits if w_bits == FLOAT_BITS else w_bits
        a = self.native_bits if a_bits == FLOAT_BITS else a_bits
        return (_round_up_to(w, self._modes), _round_up_to(a, self._modes), 0)

    @staticmethod
    def fused(dp: Datapath) -> tuple[int, int]:
        """(products per Fusion Unit per cycle, temporal passes) at a datapath precision."""
        w, a = dp[0], dp[1]
        return (8 // min(w, 8)) * (8 // min(a, 8)), -(-w // 8) * -(-a // 8)

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        fused, passes = self.fused(dp)
        r, c = self.rows, self.cols
        k_eff = -(-gemm.k // fused)
        folds = -(-k_eff // r) * -(-gemm.m // c)
        return gemm.groups * (folds * (2 * r + c + gemm.p - 2) - 1) * passes

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        fused, passes = self.fused(dp)
        return self.rows * self.cols * fused / float(passes)

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        return gemm.p, self.rows * self.fused(dp)[0], self.cols

    @property
    def natural_channel_multiple(self) -> int:
        return self.cols


class FixedPrecisionNPU(Accelerator):
    """An NPU with a few fixed integer modes (e.g. int8 and int4): bits round up to the next mode.

    A ``tile_k x tile_m`` MAC array (input-channel-by-output-channel, as NVDLA's atomic-C x atomic-K)
    runs ``base_bits / p`` times more products per cycle in a ``p``-bit mode, along K. Per group:
    ``folds = ceil(K / (tile_k * base_bits/p)) * ceil(M / tile_m)``, each ``P + pipeline_cycles``.
    Both operands run at ``p = mode(max(w, a))``.

    Args:
        tile_k: MACs along the reduction per cycle at ``base_bits``.
        tile_m: output channels per cycle.
        supported_bits: the integer modes, e.g. ``[4, 8]``.
        base_bits: the mode ``tile_k x tile_m`` is quoted at.
        pipeline_cycles: fill/drain per fold.
        **common: see :class:`Accelerator`.
    """

    kind = "npu"

    @property
    def max_bits(self) -> int:
        """Widest integer mode: wider requests would silently run (and be costed) at this width."""
        return self.supported_bits[-1]

    def __init__(
        self,
        *,
        tile_k: int,
        tile_m: int,
        supported_bits: Sequence[int] = (4, 8),
        base_bits: int = 8,
        pipeline_cycles: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        _positive("tile_k", tile_k)
        _positive("tile_m", tile_m)
        modes = sorted(int(b) for b in supported_bits)
        if not modes or any(base_bits % b for b in modes if b <= base_bits):
            raise AmcError(f"preset {self.name!r}: supported_bits={modes} must divide base_bits={base_bits}")
        self.tile_k, self.tile_m = int(tile_k), int(tile_m)
        self.supported_bits = tuple(modes)
        self.base_bits = int(base_bits)
        self.pipeline_cycles = int(pipeline_cycles)

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        w = self.native_bits if w_bits == FLOAT_BITS else w_bits
        a = self.native_bits if a_bits == FLOAT_BITS else a_bits
        p = _round_up_to(max(w, a), self.supported_bits)
        return (p, p, 0)

    def _k_per_cycle(self, dp: Datapath) -> int:
        return max(1, self.tile_k * self.base_bits // dp[0])

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        folds = -(-gemm.k // self._k_per_cycle(dp)) * -(-gemm.m // self.tile_m)
        return gemm.groups * folds * (gemm.p + self.pipeline_cycles)

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        return float(self._k_per_cycle(dp) * self.tile_m)

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        return gemm.p, self._k_per_cycle(dp), self.tile_m

    @property
    def natural_channel_multiple(self) -> int:
        return self.tile_m


class GpuRoofline(Accelerator):
    """A GPU as tiles, waves and a per-precision peak (tensor cores).

    Each group's (M x P) output is cut into ``tile_m x tile_p`` thread-block tiles; tiles run in waves of
    ``num_sms``; a tile takes ``tile_m * tile_p * ceil(K/tile_k)*tile_k / macs_per_sm_per_cycle(p)``
    cycles. Integer modes round up (``p = mode(max(w, a))``); "unquantized" (32) runs in the native float
    format (fp16 on tensor cores).

    Args:
        num_sms: streaming multiprocessors.
        precisions: the modes, ints for integer widths plus ``native_bits`` for the float format.
        macs_per_sm_per_cycle: dense tensor-core MACs per SM per clock for each entry of ``precisions``.
        tile_m: thread-block tile over output channels.
        tile_p: thread-block tile over output pixels (x batch).
        tile_k: K step of the main loop.
        **common: see :class:`Accelerator`.
    """

    kind = "gpu"

    def __init__(
        self,
        *,
        num_sms: int,
        precisions: Sequence[int],
        macs_per_sm_per_cycle: Sequence[float],
        tile_m: int = 128,
        tile_p: int = 128,
        tile_k: int = 32,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if len(precisions) != len(macs_per_sm_per_cycle) or not precisions:
            raise AmcError(f"preset {self.name!r}: precisions and macs_per_sm_per_cycle need equal, non-zero length")
        for n, v in (("num_sms", num_sms), ("tile_m", tile_m), ("tile_p", tile_p), ("tile_k", tile_k)):
            _positive(n, v)
        rates = {int(p): float(r) for p, r in zip(precisions, macs_per_sm_per_cycle, strict=True)}
        if self.native_bits not in rates:
            raise AmcError(f"preset {self.name!r}: native_bits={self.native_bits} needs an entry in precisions")
        self.num_sms = int(num_sms)
        self.rates = rates
        self.int_modes = tuple(sorted(p for p in rates if p != self.native_bits))
        self.tile_m, self.tile_p, self.tile_k = int(tile_m), int(tile_p), int(tile_k)

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        if w_bits == FLOAT_BITS or a_bits == FLOAT_BITS or not self.int_modes:
            n = self.native_bits
            return (n, n, n)
        b = max(w_bits, a_bits)
        if b > self.int_modes[-1]:
            n = self.native_bits
            return (n, n, n)
        p = _round_up_to(b, self.int_modes)
        return (p, p, 0)

    def _rate(self, dp: Datapath) -> float:
        return self.rates[dp[2] or dp[0]]

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        tiles = gemm.groups * -(-gemm.m // self.tile_m) * -(-gemm.p // self.tile_p)
        waves = -(-tiles // self.num_sms)
        k_pad = -(-gemm.k // self.tile_k) * self.tile_k
        per_tile = int(-(-(self.tile_m * self.tile_p * k_pad) // self._rate(dp)))
        return waves * per_tile

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        return self.num_sms * self._rate(dp)

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        return self.tile_p, gemm.k, self.tile_m

    @property
    def natural_channel_multiple(self) -> int:
        return self.tile_m


class RowStationaryArray(Accelerator):
    """Eyeriss-style row-stationary array, approximated analytically.

    Row stationary maps one 2-D convolution (one image, one input channel, one filter) onto a "PE set"
    of R rows (filter rows) by E columns (output rows); each PE runs a 1-D convolution of S taps over F
    outputs (``S*F`` MACs, one per cycle). The approximation: a set is folded onto the ``rows x cols``
    array as ``ceil(R/rows)`` row passes by ``ceil(E/cols)`` column passes; ``floor(rows/R)`` sets
    stack vertically and ``floor(cols/E)`` side by side when they fit, and the ``N * C_in/g * C_out/g * g``
    channel pairs are dealt to those sets in rounds:
    ``cycles = ceil(R/rows) * ceil(E/cols) * ceil(pairs / sets) * S * F``. Linear layers are 1x1 convs on
    a 1x1 map, so all 168 PEs take separate channel pairs. The datapath is fixed at ``native_bits`` (16);
    Eyeriss's run-length compression and zero gating are not modelled.

    Args:
        rows: PE rows.
        cols: PE columns.
        **common: see :class:`Accelerator`.
    """

    kind = "row_stationary"

    def __init__(self, *, rows: int, cols: int, **common: Any) -> None:
        super().__init__(**common)
        _positive("rows", rows)
        _positive("cols", cols)
        self.rows, self.cols = int(rows), int(cols)

    @property
    def max_bits(self) -> int:
        """The datapath's width (Eyeriss: 16-bit fixed point); a wider operand does not fit it."""
        return self.native_bits

    def datapath(self, w_bits: int, a_bits: int) -> Datapath:
        return (self.native_bits, self.native_bits, 0)

    def _sets(self, gemm: Gemm) -> tuple[int, int, int]:
        r_used = min(gemm.r, self.rows)
        e_used = min(gemm.e, self.cols)
        sets = max(1, self.rows // r_used) * max(1, self.cols // e_used)
        return sets, -(-gemm.r // self.rows), -(-gemm.e // self.cols)

    def compute_cycles(self, gemm: Gemm, dp: Datapath) -> int:
        sets, r_passes, e_passes = self._sets(gemm)
        c_in_g = gemm.k // (gemm.r * gemm.s)
        pairs = gemm.n * gemm.groups * c_in_g * gemm.m
        return r_passes * e_passes * -(-pairs // sets) * gemm.s * gemm.f

    def peak_macs_per_cycle(self, dp: Datapath) -> float:
        return float(self.rows * self.cols)

    def reuse_tiles(self, gemm: Gemm, dp: Datapath) -> tuple[int, int, int]:
        sets = self._sets(gemm)[0]
        return max(1, min(gemm.e, self.cols) * gemm.f), gemm.r * gemm.s, max(1, sets)

    @property
    def natural_channel_multiple(self) -> int:
        # PE sets for the common 3-row filter (12 // 3 = 4 on Eyeriss): the round-robin step over filters.
        return max(1, self.rows // 3)
