"""Per-episode work that does not depend on the episode is not redone: the evaluation cache."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from test_env import make_small_env

from amc.errors import AmcError
from amc.utils import release_freed_memory


def _random_policies(env, n: int, seed: int = 0) -> list:
    return env.random_policies(n, seed)


def test_a_repeated_configuration_reuses_its_accuracy_exactly() -> None:
    env = make_small_env("joint", budgets={"bitops": 0.5})
    uncached = make_small_env("joint", budgets={"bitops": 0.5}, eval_cache=0)
    policies = _random_policies(env, 3)
    calls = []
    apply = env.compressor.apply
    env.compressor.apply = lambda *a, **k: calls.append(1) or apply(*a, **k)  # count compressions
    first = [env.evaluate(p) for p in policies]
    again = [env.evaluate(p) for p in policies]
    assert len(calls) == 3 and env.cache_hits == 3
    assert [i["cached"] for i in first] == [False] * 3 and [i["cached"] for i in again] == [True] * 3
    fresh = [uncached.evaluate(p) for p in policies]
    for a, b, c in zip(first, again, fresh):
        assert a["accuracy"] == b["accuracy"] == c["accuracy"]
        assert a["reward"] == b["reward"] == c["reward"]
        assert a["ratio/bitops"] == b["ratio/bitops"]
    assert uncached.cache_hits == 0 and not any(i["cached"] for i in fresh)


def test_the_cache_forgets_the_least_recently_used_configuration() -> None:
    env = make_small_env("quantize", eval_cache=2)
    a, b, c = _random_policies(env, 3, seed=1)
    assert len({str(p) for p in (a, b, c)}) == 3
    env.evaluate(a)
    env.evaluate(b)
    assert env.evaluate(a)["cached"]  # a is now the most recent
    env.evaluate(c)  # evicts b
    assert env.evaluate(a)["cached"] and not env.evaluate(b)["cached"]


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(AmcError, match=r"env.eval_cache=-1 is negative"):
        make_small_env("joint", eval_cache=-1)


def _rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists() or platform.libc_ver()[0] != "glibc", reason="glibc")
def test_freed_heap_goes_back_to_the_system() -> None:
    # The episode pattern: after glibc raised its mmap threshold, large tensors of varying sizes come from
    # the heap, and small live blocks between them keep the freed space from being trimmed at the top.
    big = torch.ones(6 * 2**20)
    del big
    held, keep = [], []
    for i in range(16):
        held.append(torch.ones(4 * 2**20 + i))  # ~16 MiB each
        keep.append(torch.ones(256))
    del held
    before = _rss_mib()
    assert release_freed_memory()
    assert before - _rss_mib() > 128, "the ~256 MiB freed were not returned"
    assert len(keep) == 16


def _fragment_heap(n: int = 16) -> list[torch.Tensor]:
    """Free ~16 MiB blocks held apart by small live ones (the episode pattern above); returns the live ones."""
    big = torch.ones(6 * 2**20)
    del big
    held, keep = [], []
    for i in range(n):
        held.append(torch.ones(4 * 2**20 + i))
        keep.append(torch.ones(256))
    del held
    return keep


@pytest.mark.skipif(not Path("/proc/self/status").exists() or platform.libc_ver()[0] != "glibc", reason="glibc")
def test_the_heap_is_trimmed_only_once_resident_memory_grew_past_the_slack() -> None:
    from amc.utils import HeapTrimmer

    trimmer = HeapTrimmer(slack=0.1)
    keep = _fragment_heap(4)  # the first episode's working set: part of the reference, not trimmed
    assert trimmer() is False and trimmer.reference is not None
    assert trimmer() is False, "nothing grew: no trim"
    keep += _fragment_heap(16)  # ~256 MiB freed but held: well past 10 % of this process
    before = _rss_mib()
    assert trimmer() is True and trimmer.trims == 1
    assert before - _rss_mib() > 128, "the ~256 MiB freed were not returned"
    assert trimmer() is False, "right after a trim nothing is to be trimmed"
    with pytest.raises(ValueError, match="slack"):
        HeapTrimmer(slack=-1)
    always = HeapTrimmer(slack=0)  # trims every time, and counts them too
    assert always() is True and always() is True and always.trims == 2
    assert len(keep) == 20


def test_env_finetune_batches_from_the_config_reach_the_compressor(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from test_pretrain import make_fmnist, tiny_data_args

    from amc.models import build_model
    from amc.train import build_env

    make_fmnist(tmp_path / "fm", n_train=300, n_test=50)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *tiny_data_args(tmp_path),
                "env.finetune_batches=2",
                "env.finetune_lr=0.05",
                "env.calibration_set=search",
            ],
        )
    data = instantiate(cfg.data)
    env = build_env(cfg, build_model("fmnist_cnn", num_classes=10, in_channels=1), data, dense_accuracy=0.5)
    assert len(env.compressor.finetune_batches) == 2 and env.compressor.finetune_lr == 0.05
    assert env.compressor.calibration_set == "search"
    x, y = env.compressor.finetune_batches[0]
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)


def test_the_autoq_comparison_without_nncf_is_one_line() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "benchmarks/episode_cost.py", "autoq", "--peer-python", sys.executable, "--episodes", "5"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "nncf" in res.stdout and "amc / NNCF" in res.stdout:
        pytest.skip("nncf is installed in this Python")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "cannot import nncf" in res.stderr


class _Flattening(torch.nn.Module):
    """conv-BN-ReLU then ``.view`` of the feature map: fails on an NHWC tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.view(h.shape[0], -1))


def test_channels_last_is_chosen_only_where_the_model_runs_the_same_in_it() -> None:
    from amc.envs.compression import use_channels_last

    from amc.models import build_model

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    resnet = build_model("resnet20", num_classes=10, in_channels=3).eval()
    images = [torch.randn(8, 3, 32, 32)]
    assert use_channels_last("auto", resnet, images, cpu)
    assert use_channels_last("channels_last", resnet, images, cpu)
    assert not use_channels_last("contiguous", resnet, images, cpu)
    assert not use_channels_last("auto", resnet, images, torch.device("meta"))  # not a CPU: not measured there
    viewing, small = _Flattening().eval(), [torch.randn(4, 3, 8, 8)]
    assert not use_channels_last("auto", viewing, small, cpu)
    with pytest.raises(
        AmcError,
        match=r"channels_last does not fit this model: it fails in NHWC order: view size .*; use auto or contiguous$",
    ):
        use_channels_last("channels_last", viewing, small, cpu)
    flat = torch.nn.Sequential(torch.nn.Linear(6, 3))
    assert not use_channels_last("auto", flat, [torch.randn(4, 6)], cpu)
    with pytest.raises(AmcError, match="needs 4-D image inputs"):
        use_channels_last("channels_last", flat, [torch.randn(4, 6)], cpu)
    with pytest.raises(AmcError, match="env.memory_format='nhwc' is not an option"):
        use_channels_last("nhwc", resnet, images, cpu)


@pytest.mark.parametrize("calibration_set", ["train", "search"])
def test_channels_last_models_score_what_contiguous_ones_do(
    calibration_set: str, caplog: pytest.LogCaptureFixture
) -> None:
    from amc.envs import CompressionEnv

    from amc.compress import Compressor, Policy
    from amc.graph import build_graph
    from amc.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3).eval()
    graph = build_graph(model, (3, 16, 16))
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 3, 16, 16, generator=gen)]
    x, y = torch.randn(96, 3, 16, 16, generator=gen), torch.randint(0, 10, (96,), generator=gen)

    def ordered(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)

    def compressor(nhwc: bool, **options: object) -> Compressor:  # its batches in the model's order, as make_env
        return Compressor(model, graph, calibration=[ordered(c, nhwc) for c in calib], channels_last=nhwc, **options)

    envs = [
        CompressionEnv(
            compressor(nhwc, calibration_set=calibration_set),
            (ordered(x, nhwc), y),
            budgets={"bitops": 0.4},
            eval_batch_size=32,
        )
        for nhwc in (False, True)
    ]
    small_batch = "calibrates every model on one evaluation batch: 32 images here" in caplog.text
    assert small_batch == (calibration_set == "search"), "a search calibration batch under 128 images is not warned"
    policies = _random_policies(envs[0], 4)
    compressed = envs[1].compressor.apply(policies[0])
    assert compressed.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not compressed.stem[0].weight.is_contiguous()
    assert envs[0].compressor.apply(policies[0]).stem[0].weight.is_contiguous()
    # Pruned, in float: the same function up to summation order.
    pruned = Policy(policies[0].kept, [32] * len(policies[0].w_bits), [32] * len(policies[0].a_bits))
    a, b = (e.compressor.apply(pruned)(e.search_x).detach() for e in envs)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The deployable (test) model of an NHWC search is the NCHW one, bit for bit (amc.train's test accuracy).
    deploy = envs[1].compressor.apply(policies[0], channels_last=False)
    assert deploy.stem[0].weight.is_contiguous()
    assert torch.equal(deploy(x).detach(), envs[0].compressor.apply(policies[0])(x).detach())
    if calibration_set == "train":  # with HAQ's per-episode fine-tune too: its batches follow the model's order
        tuned = [
            compressor(nhwc, finetune_batches=[(ordered(x[:32], nhwc), y[:32])]).apply(policies[0], channels_last=False)
            for nhwc in (False, True)
        ]
        assert torch.equal(tuned[0](x).detach(), tuned[1](x).detach())
    # Quantized: a value on a rounding boundary may land on the other level, so a few argmax flips at most.
    for p in policies:
        scores = [e.evaluate(p)["accuracy"] for e in envs]
        assert abs(scores[0] - scores[1]) * 96 <= 4.01, f"{scores}: more than a few predictions changed"


def test_random_policies_are_legal_and_repeat_for_a_seed() -> None:
    env = make_small_env("joint", budgets={"bitops": 0.5})
    a, b = env.random_policies(4, seed=3), env.random_policies(4, seed=3)
    assert a == b and a != env.random_policies(4, seed=4)
    assert len({str(p) for p in a}) > 1
    for p in a:
        assert env.wall.feasible(p.kept, p.w_bits, p.a_bits)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--calibration-sets", "val"], "argument --calibration-sets: val not among train, search"),
        (["--modes", "prune, foo"], "argument --modes: foo not among prune, quantize, joint"),
        (["--memory-format", "nhwc"], "argument --memory-format: invalid choice: 'nhwc'"),
        (["--splits", "512,x"], "argument --splits: '512,x' is not a comma-separated list of int"),
        (["--device", "tpu"], "argument --device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
        *(
            []
            if torch.cuda.is_available()
            else [(["--device", "cuda"], "argument --device: device=cuda asked for but no CUDA GPU is visible")]
        ),
        (["agent", "--model", "resnet20,fmnist_cnn"], "agent: --model takes one model"),
        (["agent", "--mode", "both"], "argument --mode: invalid choice: 'both'"),
        (["--episodes", "0"], "argument --episodes: 0 must be >= 1"),
        (["--splits", "512,0"], "argument --splits: 0 must be >= 1"),
        (["--threads", "0"], "argument --threads: 0 must be >= 1"),
        (["agent", "--warmup", "4", "--episodes", "4"], "agent: --warmup 4 leaves no learning episode of --episodes 4"),
        (["workers", "--n-envs", "0"], "argument --n-envs: 0 must be >= 1"),
        (["workers", "--episodes", "3", "--n-envs", "1,2"], "--episodes 3 is not a multiple of every --n-envs"),
        (["memory", "--episodes", "3"], "memory: --early 20 must be below --episodes 3"),
        (
            ["agent", "--model", "fmnist_cnn", "--split", "70000", "--episodes", "2", "--warmup", "1"],
            "error: data.search_size=70000 does not fit the 60000 Fashion-MNIST training images",
        ),
    ],
)
def test_bad_benchmark_options_are_one_line_before_any_measurement(args: list[str], message: str) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    part = [] if args[0] in ("agent", "workers", "memory") else ["phases"]
    res = subprocess.run(
        [sys.executable, "benchmarks/episode_cost.py", *part, *args], cwd=repo, capture_output=True, text=True
    )
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr and not res.stdout
    assert message in res.stderr.strip().splitlines()[-1], res.stderr


def test_the_agent_part_splits_a_ddpg_episode_into_environment_and_agent_seconds() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "benchmarks/episode_cost.py", "agent", "--model", "fmnist_cnn", "--split", "256"]
        + ["--episodes", "6", "--warmup", "2", "--outputs"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("workload: fmnist_cnn joint, split 256, 6 episodes (2 random), 7 steps each")
    assert "outputs on" in lines[0]
    total, env, agent, outputs = (float(line.split()[-1 if i < 2 else -5]) for i, line in enumerate(lines[1:5]))
    assert 0 < env < total and agent > 0 and agent + outputs == pytest.approx(total - env, abs=1e-3)
    # amc.train's outputs, each timed: they add up to the callbacks' share
    each = {line.split()[0]: float(line.split()[1]) for line in lines[5:]}
    assert {"EpisodeLog", "BestPolicyWriter", "TensorBoardLogger", "Checkpointer", "ProgressLog"} <= set(each)
    assert each["TensorBoardLogger"] > 0 and sum(each.values()) == pytest.approx(outputs, abs=1e-3)


def test_episode_records_say_which_accuracies_came_from_the_cache() -> None:
    from amc.agents.base import EpisodeRecord

    env = make_small_env("joint", budgets={"bitops": 0.5})
    (policy,) = env.random_policies(1, seed=2)
    first, again = env.evaluate(policy), env.evaluate(policy)
    rows = [EpisodeRecord.from_info(i + 1, "explore", info, 0.1).row() for i, info in enumerate((first, again))]
    assert [r["cached"] for r in rows] == [0, 1]
    rec = EpisodeRecord.from_info(2, "explore", again, 0.1)
    assert EpisodeRecord.from_dict(rec.to_dict()).cached is True
    old = {k: v for k, v in rec.to_dict().items() if k != "cached"}  # a checkpoint written before the column
    assert EpisodeRecord.from_dict(old).cached is False
