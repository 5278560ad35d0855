"""Does adaptive BatchNorm recalibration make pruned accuracy better? Random prune policies, with and without it.

    python experiments/bn_recalibration.py --policies 20 --budget 0.5

Loads (or trains) the cached default baseline, draws random prune-only policies through the budget
wall, and evaluates each on the 5,000-image search split twice: BN statistics as trained, and
recalibrated on 4 training batches of 128 images. Prints the per-policy gain and its range.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from amc.envs import make_env
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from amc.compress import Compressor
from amc.evaluate import accuracy, tensor_batches
from amc.pretrain import load_or_pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--budget", type=float, default=0.5, help="MACs ratio")
    parser.add_argument("--model", default="fmnist_cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"model={args.model}"])
    data = instantiate(cfg.data)
    model, meta = load_or_pretrain(cfg, data)
    env = make_env(model, data, budgets={"macs": args.budget}, mode="prune", bn_recalibration=True)
    plain = Compressor(model, env.graph, bn_recalibration=False)
    x, y = env.search_x, env.search_y
    rng = np.random.default_rng(0)
    gains = []
    print(f"{args.model}: dense search top-1 {100 * env.dense_accuracy:.2f}%, budget {args.budget:.0%} MACs")
    for i in range(args.policies):
        env.reset()
        for _ in range(env.n_units):
            env.decide(rng.uniform(-1, 1, 1))
        policy = env.policy()
        without = accuracy(plain.apply(policy), tensor_batches(x, y, 1000))["top1"]
        with_bn = accuracy(env.compressor.apply(policy), tensor_batches(x, y, 1000))["top1"]
        gains.append(with_bn - without)
        gain = 100 * (with_bn - without)
        print(f"policy {i:2d}: without {100 * without:6.2f}%  with {100 * with_bn:6.2f}%  gain {gain:+6.2f}")
    g = 100 * np.array(gains)
    print(f"gain from BN recalibration: mean {g.mean():+.2f}, min {g.min():+.2f}, max {g.max():+.2f} points")


if __name__ == "__main__":
    main()
