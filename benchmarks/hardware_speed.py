"""How fast the hardware model answers: per-query and whole-model times in microseconds, per preset.

Usage::

    .venv/bin/python benchmarks/hardware_speed.py [--model resnet20] [--queries 5000]

The model's units come from :func:`amc.graph.build_graph` when the model zoo is importable, otherwise from a
built-in 20-layer VGG-style list. For each preset it measures, in this one run:

* cold query: ``layer_cost`` on a (unit, c_in, c_out, w_bits, a_bits) never asked before (a cache miss);
* warm query: the same queries again (cache hits);
* cold model: ``model_cost`` of a policy none of whose layers was asked before;
* warm model: the same policy again.

Each figure is the best of three runs (fresh caches for the cold ones).

Targets: a query <= 10 us, a whole-model evaluation <= 1 ms.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Sequence

from tabulate import tabulate

from amc.hardware import HardwareModel, Layer, LayerSpec, list_presets, load_preset

log = logging.getLogger("hardware_speed")


def synthetic_units() -> list[Layer]:
    """A 20-layer VGG-style CIFAR network (19 convs + classifier)."""
    plan = [
        (32, 1),
        (32, 1),
        (64, 2),
        (64, 1),
        (128, 2),
        (128, 1),
        (128, 1),
        (256, 2),
        (256, 1),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
    ]
    units: list[Layer] = []
    c, hw = 3, 32
    for i, (co, s) in enumerate(plan):
        units.append(Layer.conv(c, co, 3, hw // s, stride=s, in_hw=hw, name=f"conv{i}"))
        c, hw = co, hw // s
    units.append(Layer.linear(c, 10, name="fc"))
    return units


def model_units(name: str) -> tuple[str, Sequence[LayerSpec]]:
    """Units of a zoo model (CIFAR-sized input), or the synthetic list when the zoo is unavailable."""
    try:
        from amc.graph import build_graph
        from amc.models import build_model
    except ImportError:
        return "synthetic-vgg20", synthetic_units()
    shape = (1, 28, 28) if name == "fmnist_cnn" else (3, 32, 32)
    model = build_model(name, num_classes=10, in_channels=shape[0])
    return name, build_graph(model, shape, check_routing=False).units


Query = tuple[int, int, int, int, int]


def random_queries(units: Sequence[LayerSpec], n: int, rng: random.Random) -> list[Query]:
    """Distinct random queries (unit, c_in, c_out, w_bits, a_bits)."""
    bits = (1, 2, 3, 4, 5, 6, 7, 8, 32)
    seen: set[Query] = set()
    while len(seen) < n:
        i = rng.randrange(len(units))
        u = units[i]
        seen.add((i, rng.randint(1, u.in_channels), rng.randint(1, u.out_channels), rng.choice(bits), rng.choice(bits)))
    return list(seen)


def random_policies(units: Sequence[LayerSpec], n: int, rng: random.Random) -> list[tuple[list[int], ...]]:
    """Random whole-model policies (c_in, c_out, w_bits, a_bits lists)."""
    out = []
    for _ in range(n):
        c_in = [rng.randint(1, u.in_channels) for u in units]
        c_out = [rng.randint(1, u.out_channels) for u in units]
        w = [rng.choice((2, 3, 4, 5, 6, 8)) for _ in units]
        a = [rng.choice((2, 3, 4, 5, 6, 8)) for _ in units]
        out.append((c_in, c_out, w, a))
    return out


def _timed(hw: HardwareModel, calls: Sequence[tuple], method: str) -> float:
    """Mean seconds per call of ``hw.<method>(*args)`` over ``calls``."""
    fn = getattr(hw, method)
    start = time.perf_counter()
    for args in calls:
        fn(*args)
    return (time.perf_counter() - start) / len(calls)


def bench_preset(
    preset: str, units: Sequence[LayerSpec], n_queries: int, n_models: int, seed: int, repeats: int = 3
) -> list[object]:
    """Time one preset; returns a table row of microseconds.

    Each figure is the best of ``repeats`` runs (the timeit convention: other processes on a shared
    machine only ever add time); every cold run starts from a fresh, empty cache.
    """
    rng = random.Random(seed)
    queries = random_queries(units, n_queries, rng)
    policies = random_policies(units, n_models, rng)
    acc = load_preset(preset)
    best = [float("inf")] * 4
    for _ in range(repeats):
        hw = HardwareModel(acc, units)
        cold_q = _timed(hw, queries, "layer_cost")
        warm_q = _timed(hw, queries, "layer_cost")
        hw = HardwareModel(acc, units)
        cold_m = _timed(hw, policies, "model_cost")
        warm_m = _timed(hw, policies, "model_cost")
        best = [min(b, x) for b, x in zip(best, (cold_q, warm_q, cold_m, warm_m), strict=True)]
    return [preset, *(x * 1e6 for x in best)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="zoo model whose units to use (default resnet20)")
    parser.add_argument("--queries", type=int, default=5000, help="distinct layer queries per preset")
    parser.add_argument("--policies", type=int, default=200, help="whole-model policies per preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name, units = model_units(args.model)
    rows = [bench_preset(p, units, args.queries, args.policies, args.seed) for p in list_presets()]
    print(f"model: {name} ({len(units)} units); {args.queries} queries, {args.policies} policies per preset")
    print(
        tabulate(
            rows,
            headers=["preset", "query cold (us)", "query warm (us)", "model cold (us)", "model warm (us)"],
            floatfmt=".2f",
        )
    )
    worst_q = max(r[1] for r in rows)  # type: ignore[type-var]
    worst_m = max(r[3] for r in rows)  # type: ignore[type-var]
    print(f"worst cold query {worst_q:.2f} us (target <= 10); worst cold whole-model {worst_m:.1f} us (target <= 1000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
