"""Speed of a closed-form cost query (MACs, params, size, BitOps) for random policies.

    python benchmarks/cost_query.py

The environment asks for costs inside every step (the budget wall tries several candidates per step),
so a query must cost microseconds. Prints the mean time per query for several models, measured in one run.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from amc.cost import CostModel
from amc.graph import build_graph
from amc.models import build_model

MODELS = [
    ("fmnist_cnn", {"in_channels": 1}, (1, 28, 28)),
    ("resnet20", {"in_channels": 1}, (1, 28, 28)),
    ("resnet56", {"in_channels": 3}, (3, 32, 32)),
    ("mobilenet_v2", {"in_channels": 3, "variant": "cifar"}, (3, 32, 32)),
]


def main(queries: int = 20000) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'model':<14}{'units':>6}{'groups':>7}{'us/query':>10}")
    for name, kwargs, shape in MODELS:
        graph = build_graph(build_model(name, num_classes=10, **kwargs), shape)
        costs = CostModel(graph)
        configs = [
            (
                np.array(graph.channels_from_ratios(list(rng.uniform(0.1, 1, len(graph.groups))))),
                rng.integers(2, 9, len(graph.units)),
                rng.integers(2, 9, len(graph.units)),
            )
            for _ in range(256)
        ]
        t0 = time.perf_counter()
        for i in range(queries):
            kept, w, a = configs[i % len(configs)]
            costs.cost(kept, w, a)
        per = (time.perf_counter() - t0) / queries * 1e6
        print(f"{name:<14}{len(graph.units):>6}{len(graph.groups):>7}{per:>10.1f}")


if __name__ == "__main__":
    main()
