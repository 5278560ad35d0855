"""Per-operation energy figures (default: Horowitz, ISSCC 2014, 45 nm) and the MAC energy by precision.

Source of every default: M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, pp. 10-14, energy table for a 45 nm process at 0.9 V:

=====================  =========
operation              energy
=====================  =========
8-bit integer add      0.03 pJ
32-bit integer add     0.1 pJ
8-bit integer mult     0.2 pJ
32-bit integer mult    3.1 pJ
16-bit float add       0.4 pJ
16-bit float mult      1.1 pJ
32-bit float add       0.9 pJ
32-bit float mult      3.7 pJ
64-bit SRAM read 8 kB  10 pJ
64-bit DRAM access     1.3-2.6 nJ
=====================  =========

Per-byte memory figures follow the widely used 32-bit-word version of the same table (Han et al., "Learning
both Weights and Connections for Efficient Neural Networks", NeurIPS 2015, Fig. 1, citing Horowitz):
32-bit SRAM read 5 pJ -> 1.25 pJ/byte, 32-bit DRAM access 640 pJ -> 160 pJ/byte (the low end of Horowitz's
1.3-2.6 nJ per 64 bits).

Integer multipliers are scaled by ``w * a / 64``: array-multiplier energy grows with the product of the
operand widths, and Horowitz's own two points agree (0.2 pJ x (32*32)/(8*8) = 3.2 pJ against 3.1 pJ
measured for 32 bits). The accumulator add is charged at ``acc_bits`` (default 32, i.e. 0.1 pJ). These are
45 nm figures for every preset, whatever process the real chip uses: compare energies between policies
on one preset, not across presets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation; defaults are Horowitz (ISSCC 2014) 45 nm figures, see the module docstring.

    Attributes:
        mult8_pj: 8-bit integer multiply (Horowitz: 0.2 pJ).
        add32_pj: 32-bit integer add (Horowitz: 0.1 pJ), the accumulator of an integer MAC.
        fp16_mac_pj: 16-bit float multiply + add (Horowitz: 1.1 + 0.4 pJ).
        fp32_mac_pj: 32-bit float multiply + add (Horowitz: 3.7 + 0.9 pJ).
        sram_pj_per_byte: on-chip SRAM access per byte (Horowitz: 10 pJ per 64 bits from 8 kB).
        dram_pj_per_byte: DRAM access per byte (640 pJ per 32 bits, Han et al. 2015 from Horowitz).
        acc_bits: accumulator width of an integer MAC.
    """

    mult8_pj: float = 0.2
    add32_pj: float = 0.1
    fp16_mac_pj: float = 1.5
    fp32_mac_pj: float = 4.6
    sram_pj_per_byte: float = 1.25
    dram_pj_per_byte: float = 160.0
    acc_bits: int = 32

    def mac_pj(self, w_bits: int, a_bits: int, float_bits: int = 0) -> float:
        """Energy of one multiply-accumulate in pJ.

        Args:
            w_bits: weight width the datapath multiplies at.
            a_bits: activation width the datapath multiplies at.
            float_bits: 16 or 32 when the datapath runs in floating point (then the widths are ignored);
                0 for integer.
        """
        if float_bits == 16:
            return self.fp16_mac_pj
        if float_bits == 32:
            return self.fp32_mac_pj
        return self.mult8_pj * (w_bits * a_bits) / 64.0 + self.add32_pj * self.acc_bits / 32.0

    @property
    def psum_bytes(self) -> float:
        """Bytes of one partial sum moved through SRAM."""
        return self.acc_bits / 8.0
