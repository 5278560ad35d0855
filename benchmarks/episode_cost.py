"""What one search episode costs: per phase, against one forward pass, over workers, and in memory.

Five parts, each measured in one run (timings on shared machines swing; compare the ratios):

    python benchmarks/episode_cost.py phases            # seconds per phase, episode / forward ratio
    python benchmarks/episode_cost.py workers           # episodes per second with agent.n_envs = 1, 2, 4
    python benchmarks/episode_cost.py memory            # peak RSS of a 400-episode prune search
    python benchmarks/episode_cost.py autoq --peer-python PATH   # quantize episodes against NNCF's AutoQ
    python benchmarks/episode_cost.py agent --outputs   # a DDPG episode: the environment, the agent, the outputs

``phases``, ``workers`` and ``agent`` take ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) for the
evaluation, ``agent`` also ``--agent-device`` for DDPG's networks and replay buffer (issue #16's GPU part:
``phases --device cuda --models resnet20``, ``workers --device cuda --n-envs 1,4`` and ``agent --outputs --device
cuda``, ResNet-20 joint on the 5,000-image split for 120 episodes by default).

``phases`` runs episodes of seeded random actions through the budget wall (50% MACs in prune mode, 50%
BitOps in quantize and joint mode) for each model, mode and search-split size, and times, for each
episode's policy, one forward pass of its compressed model over the same split (the ratio divides the
mean episode by the mean forward pass). Models: fmnist_cnn and
ResNet-20 on Fashion-MNIST (1x28x28), and ResNet-20 on 3x32x32 images (CIFAR-10's format, written with
random pixels to a temporary folder: the cost does not depend on the pixels). Models are untrained (the
cost does not depend on the weights either), so no baseline is needed. The evaluation cache is off. Each
row is timed with each ``env.calibration_set`` (``--calibration-sets``): ``train`` re-measures BN
statistics and activation ranges on the calibration batches in a pass of their own (``calibration``),
``search`` on one batch of the search split inside the evaluation (its seconds are in ``evaluation``).
``wall+feature`` is the budget wall and observation features over the episode's steps, ``other`` the
rest of the episode (the environment's bookkeeping, the random actions).

``workers`` runs the uniform-random baseline search (the same episodes a search runs, without a learner)
and DDPG (random warm-up, then learning) with ``agent.n_envs`` = 1, 2, 4 on fmnist_cnn (joint mode, 50%
BitOps, evaluation cache off so every episode is measured) and prints episodes per second and the ratio
to one worker, with the machine's load average before and after. The workers' start (once per search)
is timed apart from the episodes.

``agent`` runs a DDPG search (``--warmup`` random episodes, then learning; no demonstrations) and times
the environment's calls (``reset``, ``step``, ``evaluate``: compressing and evaluating) apart from the
rest of each episode: SB3's gradient steps and predictions, noise, replay. With ``--outputs`` the search
runs with ``amc.train``'s callbacks and outputs (``amc.train.run_outputs``: progress log, episodes.csv,
best_policy.json, TensorBoard scalars and policy images, checkpoints, at the ``conf/callbacks``
defaults), each timed apart (``CallbackList.seconds``).

``memory`` runs ``python -m amc.train`` (DDPG, prune mode, fmnist_cnn, the cached baseline) as a
subprocess for 400 episodes and reads its resident memory from ``/proc``: the peak after 20 episodes
and at the end, and their ratio.

``autoq`` puts a quantize-mode search beside NNCF's AutoQ (HAQ's search in NNCF, the peer named in issue
#16) on one workload: ResNet-20 on 3x32x32 images (41 M MACs), a 512-image search split, 4 x 128
calibration images (NNCF is configured for range initialisation once and BN adaptation every episode on
the same 512, but 2.19 skips the adaptation, see below), one
torch thread. amc runs its environment alone (seeded random episodes, as ``phases``) and a DDPG search
(``agent.warmup`` 4 random episodes, then learning); NNCF's AutoQ (4 warm-up episodes, bits 2/4/8) runs
in ``--peer-python``, a Python with ``nncf`` installed (amc does not depend on it), through
``benchmarks/peers/nncf_autoq.py``, right after, on the same machine. It prints seconds per episode of
each, environment alone and whole search, and amc's over NNCF's, and what one evaluation of the split
costs in each. NNCF 2.19's AutoQ environment skips its BN adaptation (``qctrl.config`` is empty there, so
``_run_quantization_pipeline`` never calls it) and keeps the ranges initialised once on the float model:
its episode is one evaluation. amc re-estimates BN statistics and ranges every episode: with
``env.calibration_set=train`` (the default) in one more pass over the calibration images, with
``search`` inside the evaluation; both are timed, each with the default NCHW (``contiguous``) and with
``env.memory_format=channels_last`` (NHWC), and put beside NNCF.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from amc.envs import CompressionEnv, make_env

from amc.data import CIFAR10, FashionMNIST
from amc.data.cifar import write_cifar_batch
from amc.evaluate import accuracy, tensor_batches
from amc.models import build_model

PHASES = ["selection", "reconstruction", "quantization", "finetune", "calibration", "evaluation"]
FMNIST = "/usr/share/datasets/fashion-mnist"


def fmnist_root() -> str:
    """The Debian package's folder when present, else the project's download folder."""
    return FMNIST if Path(FMNIST, "train-images-idx3-ubyte.gz").exists() else "data/fashion-mnist"


def random_cifar10(root: Path, n_train: int = 6000, n_test: int = 100, seed: int = 0) -> Path:
    """Write a CIFAR-10-format folder of random images (``root/cifar-10-batches-py``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    per = n_train // 5
    for i in range(5):
        data = rng.integers(0, 256, (per, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per)]
        write_cifar_batch(folder / f"data_batch_{i + 1}", {b"labels": labels, b"data": data})
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", {b"labels": [int(v) for v in rng.integers(0, 10, n_test)], b"data": test})
    return root


def data_for(workload: str, split: int, tmp: Path):  # noqa: ANN201
    if workload.endswith("@32"):
        if not (tmp / "cifar-10-batches-py").exists():
            random_cifar10(tmp)
        return CIFAR10(root=str(tmp), search_size=split)
    return FashionMNIST(root=fmnist_root(), search_size=split)


def bench_env(workload: str, split: int, mode: str, tmp: Path, **options: object) -> CompressionEnv:
    """The measured environment: an untrained ``workload`` model (seed 0), 50 % MACs in prune mode, 50 % BitOps
    otherwise, the evaluation cache off; ``options`` are more :func:`make_env` arguments."""
    data = data_for(workload, split, tmp)
    torch.manual_seed(0)
    model = build_model(workload.split("@")[0], num_classes=10, in_channels=data.in_channels)
    budgets = {"macs": 0.5} if mode == "prune" else {"bitops": 0.5}
    return make_env(model, data, budgets=budgets, mode=mode, seed=0, eval_cache=0, **options)


def bench(env: CompressionEnv, episodes: int) -> dict[str, float]:
    """Seconds per phase, per episode and of one forward pass, over ``episodes`` seeded random episodes of ``env``.

    ``forward`` is one evaluation pass over the search split of each episode's compressed model (BN
    statistics and ranges already measured), averaged over the episodes.
    """
    rng = np.random.default_rng(0)
    phases: dict[str, float] = {}
    total = 0.0
    policies = []
    for i in range(episodes + 1):  # the first episode warms up allocators and kernels
        t0 = time.perf_counter()
        env.reset()
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        if i == 0:
            continue
        total += time.perf_counter() - t0
        policies.append(env.policy())
        for k, v in info["timing"].items():
            phases[k] = phases.get(k, 0.0) + v
    # Each episode against a forward pass of its own compressed model: policies differ in MACs, so one
    # policy's forward would bias the ratio by how far it sits from the episodes' mean.
    batches = tensor_batches(env.search_x, env.search_y, env.eval_batch_size)
    forward = 0.0
    for policy in policies:
        compressed = env.compressor.apply(policy)
        accuracy(compressed, batches)  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            accuracy(compressed, batches)
        forward += (time.perf_counter() - t0) / 2
    forward /= len(policies)
    per_ep = total / episodes
    row = {k: v / episodes for k, v in phases.items()}
    row["other"] = per_ep - sum(row.values())
    row["episode"], row["forward"], row["ratio"] = per_ep, forward, per_ep / forward
    return row


def phases(args: argparse.Namespace) -> None:
    cols = [*PHASES, "wall_and_features", "other"]
    print(
        f"episodes={args.episodes} device={args.device} threads={torch.get_num_threads()} "
        f"calibration={args.calibration_batches}x128 "
        f"reconstruction={'on' if args.reconstruction else 'off'} memory_format={args.memory_format} "
        f"load={os.getloadavg()[0]:.2f}"
    )
    label = {"reconstruction": "reconstruct", "wall_and_features": "wall+feature"}  # 12 characters at most
    head = f"{'model':<14}{'mode':<9}{'split':>6}{'calib. set':>11}" + "".join(f"{label.get(c, c):>13}" for c in cols)
    print(head + f"{'episode s':>10}{'forward s':>10}{'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.models:
            for split in args.splits:
                for mode in args.modes:
                    for cset in args.calibration_sets:
                        env = bench_env(
                            workload,
                            split,
                            mode,
                            Path(tmp),
                            calibration_batches=args.calibration_batches,
                            reconstruction=args.reconstruction,
                            calibration_set=cset,
                            memory_format=args.memory_format,
                            device=args.device,
                        )
                        r = bench(env, args.episodes)
                        print(
                            f"{workload:<14}{mode:<9}{split:>6}{cset:>11}"
                            + "".join(f"{r.get(c, 0.0):>13.4f}" for c in cols)
                            + f"{r['episode']:>10.4f}{r['forward']:>10.4f}{r['ratio']:>7.2f}",
                            flush=True,
                        )


def search_rate(agent_name: str, n: int, args: argparse.Namespace) -> tuple[float, float]:
    """(episodes per second, seconds to start the workers) of one search with ``n_envs=n``."""
    from amc.agents import DDPGAgent, RandomSearch

    env = bench_env("fmnist_cnn", args.split, "joint", Path(tempfile.gettempdir()), device=args.device)  # no files
    if agent_name == "random":
        agent = RandomSearch(seed=0, n_envs=n)
    else:
        agent = DDPGAgent(warmup=0.25, exploit=0, seed=0, n_envs=n)
    t0 = time.perf_counter()
    with env.parallel(n):  # the search below reuses these workers
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        agent.search(env, args.episodes)
        seconds = time.perf_counter() - t0
    return args.episodes / seconds, started


def workers(args: argparse.Namespace) -> None:
    print(
        f"episodes={args.episodes} split={args.split} device={args.device} "
        f"threads per worker={torch.get_num_threads()} cpus={os.cpu_count()} "
        f"load before={' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(f"{'agent':<8}{'n_envs':>7}{'episodes/s':>12}{'ratio':>7}{'start s':>9}")
    for agent_name in args.agents:
        base = None
        for n in args.n_envs:
            rate, started = search_rate(agent_name, n, args)
            base = rate if base is None else base
            print(f"{agent_name:<8}{n:>7}{rate:>12.3f}{rate / base:>7.2f}{started:>9.2f}", flush=True)
    print(f"load after={' '.join(f'{v:.2f}' for v in os.getloadavg())}")


class _EnvClock:
    """Seconds inside an environment's ``reset``, ``step``, ``evaluate`` and ``evaluate_many`` (outermost calls)."""

    def __init__(self, env: CompressionEnv) -> None:
        self.seconds, self._depth = 0.0, 0
        for name in ("reset", "step", "evaluate", "evaluate_many"):
            setattr(env, name, self._timed(getattr(env, name)))

    def _timed(self, method):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - t0

        return call


def agent_share(args: argparse.Namespace) -> None:
    """Seconds per episode of a DDPG search, split into the environment's, the outputs' and the rest (the agent)."""
    from amc.agents import DDPGAgent

    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(args.model, args.split, args.mode, Path(tmp), device=args.device)
        clock = _EnvClock(env)
        agent = DDPGAgent(warmup=args.warmup / args.episodes, exploit=0, seed=0, device=args.agent_device)
        callbacks, finish = outputs_of(args, agent, env, Path(tmp) / "run") if args.outputs else (None, None)
        t0 = time.perf_counter()
        agent.search(env, args.episodes, callbacks)
        if finish is not None:  # TensorBoard's hparams table and closing the writer, as amc.train does after it
            t1 = time.perf_counter()
            finish()
            callbacks.seconds["TensorBoardLogger"] += time.perf_counter() - t1
        total = time.perf_counter() - t0
    per, env_s = total / args.episodes, clock.seconds / args.episodes
    out_s = sum(callbacks.seconds.values()) / args.episodes if callbacks is not None else 0.0
    print(
        f"workload: {args.model} {args.mode}, split {args.split}, {args.episodes} episodes ({args.warmup} random), "
        f"{len(env.graph.units)} steps each, env on {args.device}, agent on {args.agent_device}, "
        f"{torch.get_num_threads()} thread(s), outputs {'on' if args.outputs else 'off'}, load {os.getloadavg()[0]:.2f}"
    )
    rest = per - env_s - out_s
    print(f"{'s per episode':<36}{per:>9.4f}")
    print(f"{'  environment (compress, evaluate)':<36}{env_s:>9.4f}")
    print(f"{'  agent (updates, predictions)':<36}{rest:>9.4f}  ({rest / per:.0%} of the episode)")
    if callbacks is not None:
        print(f"{'  callbacks and outputs':<36}{out_s:>9.4f}  ({out_s / per:.0%} of the episode)")
        for name, seconds in sorted(callbacks.seconds.items(), key=lambda kv: -kv[1]):
            print(f"{'    ' + name:<36}{seconds / args.episodes:>9.4f}")


def outputs_of(args: argparse.Namespace, agent, env: CompressionEnv, run_dir: Path):  # noqa: ANN001, ANN201
    """amc.train's callbacks for this workload (progress log, episodes.csv, best_policy.json, TensorBoard,
    checkpoints; defaults of ``conf/callbacks``, no progress bar), and the call that finishes TensorBoard."""
    from hydra import compose, initialize_config_module

    from amc.train import build_callbacks, run_outputs

    budget = "macs" if args.mode == "prune" else "bitops"
    overrides = [f"model={args.model}", f"env={args.mode}", "budgets.latency=null", f"budgets.{budget}=0.5"]
    overrides += [f"episodes={args.episodes}", "callbacks.progress_bar=false", f"output_dir={run_dir}"]
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    callbacks, _, tensorboard = run_outputs(cfg, agent, env, run_dir, build_callbacks(cfg))
    return callbacks, tensorboard.finish


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory(args: argparse.Namespace) -> None:
    """Peak resident memory of ``python -m amc.train`` after ``--early`` episodes and at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "amc.train",
            f"model={args.model}",
            "env=prune",
            "budgets.latency=null",
            "budgets.macs=0.5",
            f"episodes={args.episodes}",
            f"data.root={fmnist_root()}",
            "callbacks.progress_bar=false",
            "callbacks.test_best=false",
            f"hydra.run.dir={run}",
            *args.overrides,
        ]
        print(" ".join(cmd[1:]), flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        early = None
        samples: list[tuple[int, int]] = []
        while proc.poll() is None:
            time.sleep(0.5)
            log = run / "episodes.csv"
            done = max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0
            try:
                hwm, rss = _status_kib(proc.pid, "VmHWM"), _status_kib(proc.pid, "VmRSS")
            except (OSError, KeyError):
                break
            samples.append((done, rss))
            if early is None and done >= args.early:
                early = hwm
        err = proc.communicate()[1]
        if proc.returncode:
            raise SystemExit(f"the search failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    peak = max(r for _, r in samples)
    at_early = max((r for d, r in samples if d <= args.early), default=0)
    print(f"episodes={args.episodes} model={args.model} mode=prune load={os.getloadavg()[0]:.2f}")
    print(f"peak RSS up to episode {args.early}: {at_early / 1024:.0f} MiB (VmHWM {early and early / 1024:.0f} MiB)")
    print(f"peak RSS over the whole search: {peak / 1024:.0f} MiB; ratio {peak / max(at_early, 1):.3f}")


def autoq(args: argparse.Namespace) -> None:
    """amc's quantize episodes (environment, DDPG search) against NNCF AutoQ's on the same workload."""
    from amc.agents import DDPGAgent

    try:
        probe = subprocess.run([args.peer_python, "-c", "import nncf"], capture_output=True, text=True)
    except OSError as exc:
        raise SystemExit(
            f"error: cannot run --peer-python {args.peer_python} ({exc.strerror}); give a Python's path"
        ) from None
    if probe.returncode:  # before minutes of amc episodes
        raise SystemExit(
            f"error: {args.peer_python} cannot import nncf; pass --peer-python with a Python that has it "
            "(pip install torch==2.13.0 nncf==2.19.0 in a separate venv)"
        )
    load = os.getloadavg()[0]
    amc_rows = {}  # (calibration set, memory format) -> (environment s/episode, search s/episode, one evaluation s)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("contiguous", "channels_last"):
            for cset in ("train", "search"):
                env = bench_env(
                    "resnet20@32", args.split, "quantize", Path(tmp), calibration_set=cset, memory_format=fmt
                )
                row = bench(env, args.episodes)
                agent = DDPGAgent(warmup=4 / args.episodes, exploit=0, seed=0)
                t0 = time.perf_counter()
                agent.search(env, args.episodes)
                amc_rows[(cset, fmt)] = (row["episode"], (time.perf_counter() - t0) / args.episodes, row["forward"])
    root = Path(__file__).resolve().parents[1]
    cmd = [
        args.peer_python,
        str(root / "benchmarks" / "peers" / "nncf_autoq.py"),
        f"--episodes={args.episodes}",
        "--warmup=4",
        f"--split={args.split}",
        "--calibration=512",
    ]
    environ = {**os.environ, "PYTHONPATH": str(root), "NNCF_TORCH_LEGACY_TRACING": "1"}
    with tempfile.TemporaryDirectory() as tmp:  # NNCF writes graph files into its working directory
        done = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=tmp)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: NNCF's AutoQ failed in {args.peer_python} ({tail}); fix that Python's nncf install")
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"workload: resnet20 3x32x32, quantize, split {args.split}, {args.episodes} episodes, 1 thread")
    print(f"load before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"{'':<44}{'environment s/ep':>18}{'search s/ep':>13}{'evaluations/ep':>16}")
    for (cset, fmt), (env_only, search, forward) in amc_rows.items():
        name = f"amc calibration_set={cset} {fmt}"
        print(f"{name:<44}{env_only:>18.3f}{search:>13.3f}{env_only / forward:>16.2f}")
    print(f"{peer['peer']:<44}{peer['env_s']:>18.3f}{peer['episode_s']:>13.3f}{peer['env_s'] / peer['eval_s']:>16.2f}")
    for (cset, fmt), (env_only, search, _) in amc_rows.items():
        name = f"amc ({cset}, {fmt}) / NNCF"
        print(f"{name:<44}{env_only / peer['env_s']:>18.2f}{search / peer['episode_s']:>13.2f}")
    print(
        f"one evaluation of the split: amc {amc_rows[('train', 'contiguous')][2]:.3f} s (contiguous), "
        f"{amc_rows[('train', 'channels_last')][2]:.3f} s (channels_last); NNCF {peer['eval_s']:.3f} s"
    )


def listed(choices: tuple[str, ...] | None = None, kind: type = str, low: int | None = None):  # noqa: ANN201
    """An argparse type: a comma-separated list (spaces ignored), each item of ``kind``, among ``choices``
    and (numbers) at least ``low``."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        bad = [t for t in items if choices is not None and t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)} not among {', '.join(choices)}")
        small = [str(v) for v in values if low is not None and v < low]
        if small:
            raise argparse.ArgumentTypeError(f"{', '.join(small)} must be >= {low}")
        return values

    return parse


MODELS = ("fmnist_cnn", "resnet20", "resnet20@32")


def at_least(low: int):  # noqa: ANN201
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


def device_name(text: str) -> str:
    """An argparse type: a device this machine has (``auto``: CUDA when there is one)."""
    from amc.errors import AmcError
    from amc.utils import resolve_device

    try:
        return str(resolve_device(text))
    except AmcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("phases", help="seconds per phase and the episode / forward ratio", formatter_class=fmt)
    p.add_argument("--episodes", type=at_least(1), default=5, help="timed episodes per row (after one warm-up)")
    p.add_argument(
        "--models", type=listed(MODELS), default="fmnist_cnn,resnet20,resnet20@32", help="name[@32 for 3x32x32 images]"
    )
    p.add_argument("--splits", type=listed(kind=int, low=1), default="512,5000", help="search-split sizes")
    p.add_argument(
        "--modes", type=listed(("prune", "quantize", "joint")), default="prune,quantize,joint", help="env modes"
    )
    p.add_argument("--threads", type=at_least(1), default=1, help="torch threads")
    p.add_argument("--calibration-batches", type=at_least(1), default=4, help="env.calibration_batches (of 128 images)")
    p.add_argument("--reconstruction", action="store_true", help="AMC's least-squares reconstruction on")
    p.add_argument(
        "--calibration-sets",
        type=listed(("train", "search")),
        default="train,search",
        help="env.calibration_set values to time (train, search)",
    )
    p.add_argument(
        "--memory-format",
        default="contiguous",
        choices=("contiguous", "channels_last", "auto"),
        help="env.memory_format",
    )
    p.add_argument("--device", type=device_name, default="cpu", help="evaluation device: cpu, cuda, cuda:N, auto")
    w = sub.add_parser(
        "workers", help="episodes per second with agent.n_envs workers, and the ratio to the first", formatter_class=fmt
    )
    w.add_argument("--episodes", type=at_least(1), default=48, help="per search (a multiple of every n_envs)")
    w.add_argument("--split", type=at_least(1), default=5000, help="search-split images")
    w.add_argument("--agents", type=listed(("random", "ddpg")), default="random,ddpg", help="searches to time")
    w.add_argument("--n-envs", type=listed(kind=int, low=1), default="1,2,4", help="the ratio is to the first")
    w.add_argument(
        "--threads", type=at_least(1), default=1, help="torch threads of each worker (and of the main process)"
    )
    w.add_argument("--device", type=device_name, default="cpu", help="every worker's evaluation device")
    g = sub.add_parser("agent", help="seconds per DDPG episode: the environment's and the agent's", formatter_class=fmt)
    g.add_argument("--model", type=listed(MODELS), default="resnet20", help="one of " + ", ".join(MODELS))
    g.add_argument("--mode", choices=("prune", "quantize", "joint"), default="joint", help="env mode")
    g.add_argument("--split", type=at_least(1), default=5000, help="search-split images")
    g.add_argument("--episodes", type=at_least(2), default=120, help="episodes of the search")
    g.add_argument("--warmup", type=at_least(0), default=10, help="random episodes before learning (< --episodes)")
    g.add_argument("--device", type=device_name, default="cpu", help="the environment's evaluation device")
    g.add_argument("--agent-device", type=device_name, default="cpu", help="the agent's networks and replay buffer")
    g.add_argument("--threads", type=at_least(1), default=1, help="torch threads")
    g.add_argument(
        "--outputs",
        action="store_true",
        help="with amc.train's callbacks and outputs (episodes.csv, best policy, TensorBoard, checkpoints) timed",
    )
    m = sub.add_parser(
        "memory", help="peak RSS of a prune search after --early episodes and at the end", formatter_class=fmt
    )
    m.add_argument("--episodes", type=at_least(2), default=400, help="episodes of the search")
    m.add_argument("--early", type=at_least(1), default=20, help="< --episodes")
    m.add_argument("--model", default="fmnist_cnn", help="model= of amc.train")
    m.add_argument("overrides", nargs="*", help="more amc.train overrides (e.g. agent=random)")
    a = sub.add_parser(
        "autoq", help="quantize episodes against NNCF's AutoQ on ResNet-20 (3x32x32)", formatter_class=fmt
    )
    a.add_argument("--peer-python", default=sys.executable, help="a Python with nncf installed")
    a.add_argument("--episodes", type=at_least(5), default=16, help="4 of them warm-up")
    a.add_argument("--split", type=at_least(1), default=512, help="search-split images")
    args = parser.parse_args()
    if args.part == "agent":
        args.model = args.model[0] if len(args.model) == 1 else parser.error("agent: --model takes one model")
        if args.warmup >= args.episodes:
            parser.error(f"agent: --warmup {args.warmup} leaves no learning episode of --episodes {args.episodes}")
    if args.part == "memory" and args.early >= args.episodes:
        parser.error(f"memory: --early {args.early} must be below --episodes {args.episodes}")
    if args.part == "workers" and any(args.episodes % n for n in args.n_envs):
        parser.error(f"workers: --episodes {args.episodes} is not a multiple of every --n-envs {args.n_envs}")
    torch.set_num_threads(getattr(args, "threads", 1))
    from amc.errors import AmcError

    try:
        {"phases": phases, "workers": workers, "memory": memory, "autoq": autoq, "agent": agent_share}[args.part](args)
    except AmcError as exc:  # a value amc refuses (a split larger than the data, ...): its one line
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
