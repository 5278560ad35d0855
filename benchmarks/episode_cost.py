"""How much one search episode costs, compared with one forward pass of the model it produces.

For each model it runs N episodes of random actions in joint mode (50% MACs budget) on a 5,000-image
Fashion-MNIST search split, then, for the last episode's policy, times one forward pass of the
compressed model over the same split. It prints seconds per episode by phase, the ratio of episode
time to that forward pass, and the process's peak memory. Run with reconstruction off and on:

    python benchmarks/episode_cost.py --episodes 5
    python benchmarks/episode_cost.py --episodes 5 --reconstruction

Everything is measured in this one run (timings on shared machines swing; compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from amc.envs import make_env

from amc.data import FashionMNIST
from amc.evaluate import accuracy, tensor_batches
from amc.models import build_model


def bench(name: str, data: FashionMNIST, episodes: int, reconstruction: bool, mode: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    env = make_env(model, data, budgets={"macs": 0.5}, mode=mode, reconstruction=reconstruction, seed=0)
    rng = np.random.default_rng(0)
    phases: dict[str, float] = {}
    total = 0.0
    for _ in range(episodes):
        t0 = time.perf_counter()
        env.reset()
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        total += time.perf_counter() - t0
        for k, v in info["timing"].items():
            phases[k] = phases.get(k, 0.0) + v
    compressed = env.compressor.apply(env.policy())
    x, y = env.search_x, env.search_y
    accuracy(compressed, tensor_batches(x[:1000], y[:1000], env.eval_batch_size))  # warm-up
    t0 = time.perf_counter()
    accuracy(compressed, tensor_batches(x, y, env.eval_batch_size))
    forward = time.perf_counter() - t0
    per_ep = total / episodes
    row = {k: v / episodes for k, v in phases.items()}
    row["other"] = per_ep - sum(row.values())
    row["episode"] = per_ep
    row["forward"] = forward
    row["ratio"] = per_ep / forward
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--models", default="fmnist_cnn,resnet20")
    parser.add_argument("--reconstruction", action="store_true")
    parser.add_argument("--mode", default="joint", choices=["prune", "quantize", "joint"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default="data/fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = FashionMNIST(root=args.root, num_classes=10, in_channels=1, image_size=28, search_size=5000)
    cols = [
        "selection",
        "reconstruction",
        "quantization",
        "bn_recalibration",
        "evaluation",
        "wall_and_features",
        "other",
    ]
    print(
        f"mode={args.mode} reconstruction={'on' if args.reconstruction else 'off'} episodes={args.episodes} "
        f"threads={args.threads} search split=5000"
    )
    print(f"{'model':<12}" + "".join(f"{c[:12]:>13}" for c in cols) + f"{'episode s':>11}{'forward s':>11}{'ratio':>8}")
    for name in args.models.split(","):
        r = bench(name, data, args.episodes, args.reconstruction, args.mode)
        print(
            f"{name:<12}"
            + "".join(f"{r.get(c, 0.0):>13.3f}" for c in cols)
            + f"{r['episode']:>11.3f}{r['forward']:>11.3f}{r['ratio']:>8.2f}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
