"""Per-episode work that does not depend on the episode is not redone: the evaluation cache."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from test_env import make_small_env

from amc.errors import AmcError
from amc.utils import release_freed_memory


def _random_policies(env, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        env.reset()
        for _ in range(env.n_units):
            env.decide(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        out.append(env.policy())
    return out


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


def test_env_finetune_batches_from_the_config_reach_the_compressor(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from test_pretrain import make_fmnist, tiny_data_args

    from amc.models import build_model
    from amc.train import build_env

    make_fmnist(tmp_path / "fm", n_train=300, n_test=50)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*tiny_data_args(tmp_path), "env.finetune_batches=2", "env.finetune_lr=0.05"])
    data = instantiate(cfg.data)
    env = build_env(cfg, build_model("fmnist_cnn", num_classes=10, in_channels=1), data, dense_accuracy=0.5)
    assert len(env.compressor.finetune_batches) == 2 and env.compressor.finetune_lr == 0.05
    x, y = env.compressor.finetune_batches[0]
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)


def test_the_autoq_comparison_without_nncf_is_one_line() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "benchmarks/episode_cost.py", "autoq", "--peer-python", sys.executable, "--episodes", "1"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "nncf" in res.stdout and "amc / NNCF" in res.stdout:
        pytest.skip("nncf is installed in this Python")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "cannot import nncf" in res.stderr
