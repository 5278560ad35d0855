"""Per-model wrapper the search environment calls: cached layer and model costs on one accelerator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from amc.errors import AmcError
from amc.hardware.accelerators import Accelerator
from amc.hardware.result import LayerCost, ModelCost
from amc.hardware.spec import FLOAT_BITS, LayerSpec, check_bits, geometry, lower_geometry, round_channels


class CostModelBase:
    """What :class:`HardwareModel` and :class:`~amc.hardware.tables.TableHardwareModel` share.

    Subclasses implement :meth:`_compute` for a cache miss; queries are cached per
    ``(i, c_in, c_out, w_bits, a_bits)``, so a repeated query is one dict lookup.

    Args:
        units: the model's compressible layers in forward order (:class:`~amc.hardware.spec.LayerSpec`).
    """

    def __init__(self, units: Iterable[LayerSpec]) -> None:
        self.units: tuple[LayerSpec, ...] = tuple(units)
        if not self.units:
            raise AmcError("the hardware model got no layers; pass the graph's units (conv/linear layers)")
        self._full = [(int(u.in_channels), int(u.out_channels)) for u in self.units]
        self._cache: dict[tuple[int, int, int, int, int], LayerCost] = {}

    def __len__(self) -> int:
        return len(self.units)

    def _compute(self, i: int, c_in: int, c_out: int, w_bits: int, a_bits: int) -> LayerCost:
        raise NotImplementedError

    def layer_cost(
        self, i: int, c_in: int | None = None, c_out: int | None = None, w_bits: int = 32, a_bits: int = 32
    ) -> LayerCost:
        """Cost of unit ``i`` with ``c_in``/``c_out`` channels kept at the given bit widths.

        Args:
            i: unit index in forward order.
            c_in: input channels kept (None: all).
            c_out: output channels kept (None: all).
            w_bits: weight bits, 1..16 or 32 (unquantized).
            a_bits: activation bits, 1..16 or 32.
        """
        if c_in is None or c_out is None:
            if not 0 <= i < len(self.units):
                raise AmcError(f"unit index {i} out of range; the model has {len(self.units)} units")
            full_in, full_out = self._full[i]
            c_in = full_in if c_in is None else c_in
            c_out = full_out if c_out is None else c_out
        key = (i, c_in, c_out, w_bits, a_bits)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not 0 <= i < len(self.units):
            raise AmcError(f"unit index {i} out of range; the model has {len(self.units)} units")
        check_bits(w_bits, "w_bits")
        check_bits(a_bits, "a_bits")
        cost = self._compute(i, int(c_in), int(c_out), int(w_bits), int(a_bits))
        self._cache[key] = cost
        return cost

    def model_cost(
        self,
        c_in_list: Sequence[int] | None = None,
        c_out_list: Sequence[int] | None = None,
        w_bits_list: Sequence[int] | None = None,
        a_bits_list: Sequence[int] | None = None,
    ) -> ModelCost:
        """Cost of the whole model under a policy (None for a list: dense channels / 32 bits).

        Args:
            c_in_list: input channels kept, per unit.
            c_out_list: output channels kept, per unit.
            w_bits_list: weight bits per unit.
            a_bits_list: activation bits per unit.
        """
        n = len(self.units)
        for name, lst in (
            ("c_in_list", c_in_list),
            ("c_out_list", c_out_list),
            ("w_bits_list", w_bits_list),
            ("a_bits_list", a_bits_list),
        ):
            if lst is not None and len(lst) != n:
                raise AmcError(f"{name} has {len(lst)} entries but the model has {n} units; give one per unit")
        cache = self._cache
        full = self._full
        layers = []
        for i in range(n):
            fi, fo = full[i]
            key = (
                i,
                fi if c_in_list is None else c_in_list[i],
                fo if c_out_list is None else c_out_list[i],
                FLOAT_BITS if w_bits_list is None else w_bits_list[i],
                FLOAT_BITS if a_bits_list is None else a_bits_list[i],
            )
            c = cache.get(key)
            layers.append(c if c is not None else self.layer_cost(*key))
        return ModelCost.from_layers(layers)

    def cache_clear(self) -> None:
        """Forget cached queries (after changing the accelerator's parameters in place)."""
        self._cache.clear()

    @property
    def channel_multiple(self) -> int:
        """Natural channel step of the hardware (1 when unknown)."""
        return 1

    def round_channels(self, i: int, c: int) -> int:
        """Round unit ``i``'s kept output channels up to :attr:`channel_multiple`, capped at the dense count.

        Args:
            i: unit index.
            c: kept channels.
        """
        return round_channels(c, self.channel_multiple, self._full[i][1])


class HardwareModel(CostModelBase):
    """Analytical costs of a model's layers on one :class:`~amc.hardware.accelerators.Accelerator`.

    Args:
        accelerator: the hardware (e.g. from :func:`amc.hardware.load_preset`).
        units: the model's compressible layers in forward order.
        batch: images per inference (None: the preset's batch).

    Example:
        >>> hw = HardwareModel(load_preset("bitfusion_edge"), graph.units)  # doctest: +SKIP
        >>> hw.model_cost(c_in, c_out, w_bits, a_bits).latency_s  # doctest: +SKIP
    """

    def __init__(self, accelerator: Accelerator, units: Iterable[LayerSpec], batch: int | None = None) -> None:
        super().__init__(units)
        if not isinstance(accelerator, Accelerator):
            raise AmcError(f"expected an Accelerator, got {type(accelerator).__name__}; use load_preset(name)")
        self.accelerator = accelerator
        self.batch = int(batch if batch is not None else accelerator.batch)
        if self.batch < 1:
            raise AmcError(f"batch={self.batch} is not positive; use a batch size >= 1")
        # Static per-unit shape, extracted once so a cache miss only does the channel-dependent part.
        self._geo = [geometry(u) for u in self.units]

    def _compute(self, i: int, c_in: int, c_out: int, w_bits: int, a_bits: int) -> LayerCost:
        geo = self._geo[i]
        gemm = lower_geometry(geo, c_in, c_out, self.batch)
        return self.accelerator.cost(gemm, w_bits, a_bits, geo.name)

    @property
    def channel_multiple(self) -> int:
        """The accelerator's natural channel step (e.g. array width)."""
        return self.accelerator.channel_multiple
