"""How much does the calibration set change the search accuracy an episode reports? Random policies, five sets.

    python experiments/calibration_fidelity.py --policies 30

Loads (or trains) the cached default baseline and draws random policies through the default problem
(joint mode, latency <= 0.5 on bitfusion_edge, the budget wall). Each policy is compressed and evaluated
on the search split with:

activation ranges and BN statistics re-estimated on B training batches of N images (BxN: 4x128 is the
default, ``env.calibration_batches`` x ``env.calibration_batch_size``).

It prints, against 4x128, the mean and largest absolute accuracy difference (points) and
Spearman's rank correlation over the policies (the search only needs the order right), and the
seconds per episode of each. Seeds are fixed: reruns give the same accuracies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from amc.envs import make_env
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from scipy.stats import spearmanr

from amc.compress import Compressor
from amc.pretrain import load_or_pretrain

WAYS = [(4, 128), (2, 128), (1, 128), (2, 64), (1, 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--search-size", type=int, default=None, help="search split (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"model={args.model}"]
    if args.search_size:
        overrides.append(f"data.search_size={args.search_size}")
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = instantiate(cfg.data)
    model, _ = load_or_pretrain(cfg, data)
    hardware = instantiate(cfg.hardware)
    env = make_env(model, data, hardware=hardware, budgets={"latency": args.budget}, mode="joint", eval_cache=0)
    rng = np.random.default_rng(0)
    policies = []
    for _ in range(args.policies):
        env.reset()
        for _ in range(env.n_units):
            env.decide(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        policies.append(env.policy())
    print(
        f"{args.model}: {len(policies)} random joint policies, latency <= {args.budget}, "
        f"search split {len(env.search_y)} images, dense {100 * env.dense_accuracy:.2f}%"
    )
    results = {}
    for batches, size in WAYS:
        calib = [x for x, _ in data.calibration_batches(batches, size, 0)]
        env.compressor = Compressor(model, env.graph, calibration=calib)
        t0 = time.perf_counter()
        accs = np.array([env.evaluate(p)["accuracy"] for p in policies]) * 100
        results[(batches, size)] = (accs, (time.perf_counter() - t0) / len(policies))
    ref, _ = results[WAYS[0]]
    print(f"{'calibration':<16}{'mean acc':>9}{'mean |d|':>10}{'max |d|':>9}{'spearman':>10}{'s/episode':>11}")
    for key, (accs, sec) in results.items():
        d = np.abs(accs - ref)
        rho = spearmanr(accs, ref).statistic
        print(f"{f'{key[0]}x{key[1]}':<16}{accs.mean():>9.2f}{d.mean():>10.2f}{d.max():>9.2f}{rho:>10.3f}{sec:>11.3f}")


if __name__ == "__main__":
    main()
