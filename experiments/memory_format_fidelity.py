"""How much does the memory order (``env.memory_format``) move the search accuracy of an episode? Random policies.

    python experiments/memory_format_fidelity.py --policies 30 [--mode quantize]

Loads (or trains) the cached default baseline, draws random policies through the default problem (joint
mode, or ``--mode quantize``; latency <= 0.5 on bitfusion_edge, the budget wall) and scores each on the
search split twice: with the compressed models and their inputs in NCHW (``contiguous``, the default) and
in NHWC (``channels_last``). Both are the same arithmetic in another summation order, so the scores differ
only where a value lands on the other side of a quantization (or argmax) boundary. Prints the mean and
largest absolute difference (points), how many policies differ, and the seconds per episode of each.
Seeds are fixed: reruns give the same accuracies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from amc.envs import make_env
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from amc.pretrain import load_or_pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--mode", default="joint", choices=["joint", "quantize", "prune"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    data = instantiate(cfg.data)
    model, _ = load_or_pretrain(cfg, data)
    hardware = instantiate(cfg.hardware)
    envs = {
        fmt: make_env(
            model,
            data,
            hardware=hardware,
            budgets={"latency": args.budget},
            mode=args.mode,
            eval_cache=0,
            memory_format=fmt,
        )
        for fmt in ("contiguous", "channels_last")
    }
    policies = envs["contiguous"].random_policies(args.policies, seed=0)  # the same policies for both orders
    scores, seconds = {}, {}
    for fmt, env in envs.items():
        t0 = time.perf_counter()
        scores[fmt] = np.array([env.evaluate(p)["accuracy"] for p in policies]) * 100
        seconds[fmt] = (time.perf_counter() - t0) / len(policies)
    d = np.abs(scores["contiguous"] - scores["channels_last"])
    print(
        f"{args.model}: {args.policies} random {args.mode} policies, latency <= {args.budget}, "
        f"search split {len(env.search_y)} images"
    )
    print(f"mean |d| {d.mean():.3f} points, max {d.max():.3f}, {int((d > 0).sum())} of {len(d)} policies differ")
    print(f"s/episode: contiguous {seconds['contiguous']:.3f}, channels_last {seconds['channels_last']:.3f}")


if __name__ == "__main__":
    main()
