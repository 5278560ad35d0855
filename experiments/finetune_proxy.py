"""Which search score predicts the accuracy after fine-tuning? Random pruning policies, several scores.

    python experiments/finetune_proxy.py --policies 16

Loads (or trains) the cached default baseline (fmnist_cnn on Fashion-MNIST) and draws random legal
policies through S4's problem (``benchmarks/search_quality.py``: prune mode, MACs <= 0.3, the budget
wall) that use at least 90 % of the budget, as searched policies do, plus the uniform policy.
Each policy is scored on the search split the ways a search could score
it (the environment's own ``evaluate``, so exactly what an episode reports):

- ``bn``: channels pruned, BN statistics re-estimated on 4 x 128 training images (the default);
- ``recon``: the same after AMC's least-squares reconstruction of each pruned layer's consumer
  (``env.reconstruction=true``);
- ``ft8`` / ``ft32``: HAQ's short fine-tune inside the episode on 8 / 32 labelled batches of 128
  (``env.finetune_batches``);

then fine-tuned for one epoch with ``amc.finetune``'s recipe (``epochs=1``, the S4 scoring) and tested.
It prints Spearman's rank correlation and Kendall's tau between each score and the test accuracy after
fine-tuning, the seconds per score, and which policy each score would have picked (and what that
policy reached after fine-tuning, against the best reached). Seeds are fixed: reruns give the same
numbers on CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from amc.envs import make_env
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from scipy.stats import kendalltau, spearmanr

from amc.evaluate import accuracy
from amc.pretrain import load_or_pretrain
from amc.qat import prepare_qat, strip_qat
from amc.training import Recipe, fine_tune

SCORES = {
    "bn": {},
    "recon": {"reconstruction": True},
    "ft8": {"finetune_batches": 8},
    "ft32": {"finetune_batches": 32},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=16, help="random policies (the uniform one is added)")
    parser.add_argument("--macs", type=float, default=0.3, help="MACs budget ratio")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of the final scoring")
    parser.add_argument("--scores", default=",".join(SCORES), help="comma-separated subset of " + ",".join(SCORES))
    parser.add_argument("--search-size", type=int, default=None, help="search split (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores = [s for s in args.scores.split(",") if s]
    overrides = ["model=fmnist_cnn"] + ([f"data.search_size={args.search_size}"] if args.search_size else [])
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        ft_cfg = compose("finetune", overrides=["policy=unused", f"epochs={args.epochs}", "progress_bar=false"])
    data = instantiate(cfg.data)
    dense, _ = load_or_pretrain(cfg, data)
    dense.eval()
    budgets = {"macs": args.macs}
    base = make_env(dense, data, budgets=budgets, mode="prune", eval_cache=0)
    rng = np.random.default_rng(0)
    policies = [base.uniform_solution()]
    dense_macs = base.evaluator.dense["macs"]
    for _ in range(200 * args.policies):  # random legal policies that use the budget, as searched ones do
        if len(policies) > args.policies:
            break
        base.reset()
        for _ in range(base.n_units):
            base.decide(rng.uniform(-1, 1, base.action_dim).astype(np.float32))
        p = base.policy()
        used = base.evaluator.metrics(p.kept, p.w_bits, p.a_bits)["macs"] / dense_macs
        if used >= 0.9 * args.macs and p not in policies:
            policies.append(p)

    table: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for name in scores:
        env = make_env(dense, data, budgets=budgets, mode="prune", eval_cache=0, **SCORES[name])
        t0 = time.perf_counter()
        table[name] = [float(env.evaluate(p)["accuracy"]) for p in policies]
        seconds[name] = (time.perf_counter() - t0) / len(policies)
        print(f"score {name}: {seconds[name]:.2f} s per policy", flush=True)

    recipe = Recipe.from_cfg(ft_cfg)
    after, macs = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, policy in enumerate(policies):
            model = base.compressor.apply(policy)  # BN re-estimated, no reconstruction: the "bn" score's model
            prepare_qat(model, base.graph, policy.w_bits, True)
            teacher = dense if recipe.kd else None  # as amc.finetune does
            torch.manual_seed(0)  # dropout: each policy's fine-tune as in a fresh amc.finetune process
            fine_tune(
                model, data, recipe, Path(tmp) / f"state{i}.pt", torch.device("cpu"), 0, teacher=teacher, progress=False
            )
            strip_qat(model)
            after.append(float(accuracy(model, data.test_loader(), torch.device("cpu"), (1,))["top1"]))
            cost = base.evaluator.metrics(policy.kept, policy.w_bits, policy.a_bits)
            macs.append(cost["macs"] / base.evaluator.dense["macs"])
            print(
                f"policy {i:2d}: macs {macs[-1]:.3f} "
                + " ".join(f"{n} {table[n][i]:.4f}" for n in scores)
                + f" | after {args.epochs}-epoch fine-tune {after[-1]:.4f}",
                flush=True,
            )
    ft_seconds = (time.perf_counter() - t0) / len(policies)
    best = max(after)
    print(
        f"\n{len(policies)} prune policies, MACs <= {args.macs} (policy 0: uniform); "
        f"test accuracy after a {args.epochs}-epoch fine-tune: {min(after):.4f}..{best:.4f} "
        f"({ft_seconds:.1f} s each)"
    )
    print("| score | Spearman | Kendall tau | s per policy | its pick after fine-tune | best - pick (points) |")
    print("|---|---|---|---|---|---|")
    for name in scores:
        rho = spearmanr(table[name], after).statistic
        tau = kendalltau(table[name], after).statistic
        pick = int(np.argmax(table[name]))
        print(
            f"| {name} | {rho:+.3f} | {tau:+.3f} | {seconds[name]:.2f} | {after[pick]:.4f} (policy {pick}) "
            f"| {100 * (best - after[pick]):.2f} |"
        )


if __name__ == "__main__":
    main()
