"""How much do the calibration set and pass change the search accuracy an episode reports? Random policies.

    python experiments/calibration_fidelity.py --policies 30

Loads (or trains) the cached default baseline and draws random policies through the default problem
(joint mode, or ``--mode quantize``; latency <= 0.5 on bitfusion_edge, the budget wall). Each policy is
compressed and evaluated on the search split with activation ranges and BN statistics re-estimated on B
training batches of N images (BxN: 4x128 is the default, ``env.calibration_batches`` x
``env.calibration_batch_size``), two ways, or on the search split itself (a third):

- ``one-pass`` (the library's): ranges and BN statistics measured in the same pass, each unit's range on
  what the quantized, re-normalised units before it produce (``amc.compress.recalibrate_bn``);
- ``two-pass`` (the library's way until 2026-11-30): ranges on float inputs under the trained BN statistics,
  then the statistics in a second pass with the activations quantized (and both again for a unit whose
  input the old statistics silenced);
- ``search-batch`` (``env.calibration_set=search``): both measured on one evaluation batch of the search
  split itself (a seeded random 256), in the evaluation's own pass (``amc.compress.calibrate_on_search_batch``;
  1x256 is ``env.eval_batch_size``), no training images.

It prints, against a fixed point on the largest set (16x128: ranges and statistics re-measured in turn,
three rounds, so each is measured under the other, as the evaluated model uses them), the mean accuracy,
the mean and largest absolute difference (points), Spearman's rank correlation over the policies (the
search only needs the order right) and the seconds per episode of each.
Seeds are fixed: reruns give the same accuracies.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from amc.envs import make_env
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from scipy.stats import spearmanr

from amc.compress import Compressor, Policy, recalibrate_bn
from amc.cost import FP32
from amc.pretrain import load_or_pretrain
from amc.pruning import prune_model
from amc.quantize import ActivationQuantizer, activation_quantizers, calibrate_ranges, quantize_model

# (method, batches, batch size); the first is the reference.
WAYS = [
    ("fixed-point", 16, 128),
    ("two-pass", 16, 128),
    ("two-pass", 4, 128),
    ("one-pass", 16, 128),
    ("one-pass", 4, 128),
    ("one-pass", 2, 128),
    ("one-pass", 1, 128),
    ("two-pass", 1, 128),
    ("search-batch", 1, 256),
]


def uncalibrated(comp: Compressor, policy: Policy) -> tuple[torch.nn.Module, list[ActivationQuantizer]]:
    """``policy`` applied to a copy of ``comp``'s model (pruned, weights quantized) and its activation
    quantizers, not yet calibrated; no reconstruction, no fine-tune."""
    model = copy.deepcopy(comp.model)
    prune_model(model, comp.graph, comp.keep(policy), comp.example)
    names = [u.name for u in comp.graph.units]
    quantize_model(model, names, policy.w_bits, policy.a_bits, None, comp.symmetric)
    return model, [q for q in activation_quantizers(model).values() if q.calibrating]


class TwoPassCompressor(Compressor):
    """``Compressor`` with the calibration the library used until 2026-11-30 (no reconstruction, no fine-tune)."""

    def apply(self, policy: Policy, timing: dict[str, float] | None = None, calibrate: bool = True) -> torch.nn.Module:
        model, qs = uncalibrated(self, policy)
        if qs:
            calibrate_ranges(model, qs, self.calibration, running=False)
        if self.bn_recalibration:
            recalibrate_bn(model, self.calibration)
            blind = [q for q in activation_quantizers(model).values() if q.bits < FP32 and q.max_abs == 0.0]
            if blind:
                calibrate_ranges(model, blind, self.calibration)
                recalibrate_bn(model, self.calibration)
        return model.eval()


class FixedPointCompressor(Compressor):
    """Ranges and BN statistics re-measured in turn until each is measured under the other (3 rounds).

    The consistent calibration: every range is the largest input its unit sees under the final statistics
    (with the units before it quantized), and the statistics are measured with those ranges. The reference.
    """

    def apply(self, policy: Policy, timing: dict[str, float] | None = None, calibrate: bool = True) -> torch.nn.Module:
        model, qs = uncalibrated(self, policy)
        for _ in range(3):
            for q in qs:
                q.max_abs, q.signed = 0.0, False
            calibrate_ranges(model, qs, self.calibration, running=True)
            recalibrate_bn(model, self.calibration)
        return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    parser.add_argument("--model", default="fmnist_cnn")
    parser.add_argument("--search-size", type=int, default=None, help="search split (default: the config's)")
    parser.add_argument("--mode", default="joint", choices=["joint", "quantize"], help="the policies' env.mode")
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
    env = make_env(model, data, hardware=hardware, budgets={"latency": args.budget}, mode=args.mode, eval_cache=0)
    policies = env.random_policies(args.policies, seed=0)
    print(
        f"{args.model}: {len(policies)} random {args.mode} policies, latency <= {args.budget}, "
        f"search split {len(env.search_y)} images, dense {100 * env.dense_accuracy:.2f}%"
    )
    results = {}
    for method, batches, size in WAYS:
        calib = [x for x, _ in data.calibration_batches(batches, size, 0)]
        kind = {"fixed-point": FixedPointCompressor, "two-pass": TwoPassCompressor}.get(method, Compressor)
        cset = "search" if method == "search-batch" else "train"
        if cset == "search":
            assert size == env.eval_batch_size, "search-batch calibrates on one evaluation batch"
        env.compressor = kind(model, env.graph, calibration=calib, calibration_set=cset)
        t0 = time.perf_counter()
        accs = np.array([env.evaluate(p)["accuracy"] for p in policies]) * 100
        results[(method, batches, size)] = (accs, (time.perf_counter() - t0) / len(policies))
    ref, _ = results[WAYS[0]]
    print(f"{'calibration':<20}{'mean acc':>9}{'mean |d|':>10}{'max |d|':>9}{'spearman':>10}{'s/episode':>11}")
    for (method, batches, size), (accs, sec) in results.items():
        d = np.abs(accs - ref)
        rho = spearmanr(accs, ref).statistic
        name = f"{method} {batches}x{size}"
        print(f"{name:<20}{accs.mean():>9.2f}{d.mean():>10.2f}{d.max():>9.2f}{rho:>10.3f}{sec:>11.3f}")


if __name__ == "__main__":
    main()
