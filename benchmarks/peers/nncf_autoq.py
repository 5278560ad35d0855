"""NNCF's AutoQ (HAQ's search in NNCF) on the workload of ``benchmarks/episode_cost.py autoq``: seconds per episode.

Not part of amc: it needs a Python with ``nncf`` (and its pandas, scikit-learn), which amc does not depend on;
``episode_cost.py autoq --peer-python PATH`` runs it as a subprocess with this repository on ``PYTHONPATH`` for
the model definition. Prints one JSON line: episodes, seconds per episode (NNCF's own per-episode log:
environment and agent), seconds in the environment's ``evaluate_strategy`` (BN adaptation and evaluation)
per episode, and the setup seconds before the first episode.

    python benchmarks/peers/nncf_autoq.py --episodes 12 --split 512 --calibration 512
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time

import torch
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--shape", default="3,32,32")
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="AutoQ's random warm-up episodes")
    parser.add_argument("--split", type=int, default=512, help="evaluation images per episode")
    parser.add_argument("--calibration", type=int, default=512, help="range-init and BN-adaptation images")
    parser.add_argument("--batch", type=int, default=128, help="calibration batch size")
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import nncf
    from nncf.torch import create_compressed_model, register_default_init_args
    from nncf.torch.automl.environment import quantization_env

    from amc.models import build_model

    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=shape[0]).eval()
    gen = torch.Generator().manual_seed(0)
    n = args.calibration
    train = TensorDataset(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,)))
    search = TensorDataset(torch.randn(args.split, *shape, generator=gen), torch.randint(0, 10, (args.split,)))
    train_loader = DataLoader(train, batch_size=args.batch)
    search_loader = DataLoader(search, batch_size=args.eval_batch)

    eval_seconds: list[float] = []

    def evaluate(m: torch.nn.Module, loader: DataLoader) -> float:
        t0 = time.perf_counter()
        correct = total = 0
        with torch.no_grad():
            for x, y in loader:
                correct += int((m(x).argmax(1) == y).sum())
                total += len(y)
        eval_seconds.append(time.perf_counter() - t0)
        return correct / total

    env_seconds: list[float] = []
    original = quantization_env.QuantizationEnv.evaluate_strategy

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        out = original(self, *a, **k)
        env_seconds.append(time.perf_counter() - t0)
        return out

    quantization_env.QuantizationEnv.evaluate_strategy = timed
    episode_seconds: list[float] = []

    class Episodes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.search(r"## Episode\[\d+\] Elapsed: ([0-9.]+)", record.getMessage())
            if m:
                episode_seconds.append(float(m.group(1)))

    logging.getLogger("nncf").addHandler(Episodes())
    config = nncf.NNCFConfig.from_dict(
        {
            "input_info": {"sample_size": [1, *shape]},
            "target_device": "NPU",  # AutoQ runs only for NPU or NONE (NNCF refuses CPU)
            "compression": {
                "algorithm": "quantization",
                "initializer": {
                    "range": {"num_init_samples": args.calibration},
                    "batchnorm_adaptation": {"num_bn_adaptation_samples": args.calibration},
                    "precision": {
                        "type": "autoq",
                        "bits": [2, 4, 8],
                        "iter_number": args.episodes,
                        "warmup_iter_number": args.warmup,
                        "compression_ratio": 0.15,
                        "eval_subset_ratio": 1.0,
                    },
                },
            },
        }
    )
    config = register_default_init_args(
        config,
        train_loader,
        criterion=torch.nn.CrossEntropyLoss(),
        autoq_eval_fn=evaluate,
        val_loader=search_loader,
    )
    t0 = time.perf_counter()
    create_compressed_model(model, config)
    total = time.perf_counter() - t0
    n = len(episode_seconds)
    print(
        json.dumps(
            {
                "peer": f"nncf {nncf.__version__} AutoQ",
                "episodes": n,
                "episode_s": sum(episode_seconds) / max(n, 1),
                "env_s": sum(env_seconds) / max(len(env_seconds), 1),
                "eval_s": sum(eval_seconds[-len(env_seconds) :]) / max(len(env_seconds), 1),
                "images": sum(len(y) for _, y in search_loader),
                "setup_s": total - sum(episode_seconds),
            }
        )
    )


if __name__ == "__main__":
    main()
