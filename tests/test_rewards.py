"""Rewards, observation features and hardware cost terms against numbers worked out by hand in the test.

Each expected value is written out from the definition (the paper's formula or the documented model), not
computed by the code under test, so a flipped sign or a dropped term changes a number that is checked.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.envs import CompressionEnv
from amc.envs.features import FeatureBuilder
from conftest import FlattenNet
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from amc.compress import Compressor
from amc.cost import CostModel
from amc.graph import build_graph
from amc.hardware import HardwareModel, Layer, SystolicArray
from amc.hardware.energy import EnergyModel
from amc.rewards import AccuracyDeltaReward, AccuracyReward, BlendedReward, ErrorLogMacsReward

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"


# --- rewards -------------------------------------------------------------------------------------
def test_accuracy_reward() -> None:
    assert AccuracyReward()({"accuracy": 0.7}) == pytest.approx(0.7)
    assert AccuracyReward(scale=2.0)({"accuracy": 0.7}) == pytest.approx(1.4)


def test_error_log_macs_reward_is_minus_error_times_log_macs() -> None:
    reward = ErrorLogMacsReward()
    assert reward({"accuracy": 0.75, "macs": math.e**4}) == pytest.approx(-1.0)  # -(1 - 0.75) * 4
    assert reward({"accuracy": 0.9, "macs": 1000.0}) == pytest.approx(-0.1 * 6.907755279)
    # Better accuracy and fewer MACs both raise it; a perfect model scores 0.
    assert reward({"accuracy": 0.8, "macs": 1e6}) > reward({"accuracy": 0.7, "macs": 1e6})
    assert reward({"accuracy": 0.8, "macs": 1e5}) > reward({"accuracy": 0.8, "macs": 1e6})
    assert reward({"accuracy": 1.0, "macs": 1e6}) == 0.0


def test_accuracy_delta_reward_is_negative_below_the_dense_accuracy() -> None:
    reward = AccuracyDeltaReward()  # HAQ: 0.1 per percentage point = 10 per unit of accuracy
    assert reward({"accuracy": 0.62, "dense_accuracy": 0.70}) == pytest.approx(-0.8)
    assert reward({"accuracy": 0.71, "dense_accuracy": 0.70}) == pytest.approx(0.1)
    assert AccuracyDeltaReward(scale=1.0)({"accuracy": 0.5, "dense_accuracy": 0.75}) == pytest.approx(-0.25)


def test_blended_reward_multiplies_accuracy_by_ratio_over_target_powers() -> None:
    reward = BlendedReward({"latency": -0.07, "macs": -0.03})
    metrics = {"accuracy": 0.8, "ratio/latency": 0.25, "target/latency": 0.5, "ratio/macs": 0.5}
    # 0.8 * (0.25 / 0.5) ** -0.07 * (0.5 / 1) ** -0.03 = 0.8 * 2 ** 0.1
    assert reward(metrics) == pytest.approx(0.8 * 1.0717734625362931)
    # Exactly on the targets: accuracy alone; missing a target lowers it, beating one raises it.
    on_target = {"accuracy": 0.8, "ratio/latency": 0.5, "target/latency": 0.5, "ratio/macs": 1.0}
    assert reward(on_target) == pytest.approx(0.8)
    assert reward({**on_target, "ratio/macs": 2.0}) == pytest.approx(0.8 * 2**-0.03)
    assert reward({"accuracy": 0.8}) == pytest.approx(0.8)  # metrics without a ratio are left out
    assert BlendedReward({"latency": 0.0})({**metrics}) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("name", "metrics", "expected"),
    [
        ("accuracy", {"accuracy": 0.6}, 0.6),
        ("accuracy_delta", {"accuracy": 0.6, "dense_accuracy": 0.65}, -0.5),
        ("error_log_macs", {"accuracy": 0.5, "macs": math.e**2}, -1.0),
        ("blended", {"accuracy": 0.5, "ratio/latency": 0.5, "target/latency": 0.5, "ratio/macs": 0.5}, 0.5 * 2**0.03),
    ],
)
def test_reward_configs_build_the_documented_rewards(name: str, metrics: dict, expected: float) -> None:
    reward = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert reward(metrics) == pytest.approx(expected)


# --- observation features ------------------------------------------------------------------------
class Net(nn.Module):
    """conv 1->4 (3x3, 8x8), conv 4->8 (3x3, stride 2), linear 128->10: MACs 2304, 4608, 1280."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(128, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def test_static_features_by_hand() -> None:
    graph = build_graph(Net(), (1, 8, 8))
    feats = FeatureBuilder(graph, ["macs"])
    lp = math.log1p(1280)
    expected = np.array(
        [
            # index, conv, dw, c_in, c_out, stride, kernel, params, in_size, macs, (before), after
            [0.0, 1, 0, 1 / 128, 4 / 128, 1 / 2, 1, math.log1p(36) / lp, 1, 2304 / 8192, 0, 5888 / 8192],
            [0.5, 1, 0, 4 / 128, 8 / 128, 2 / 2, 1, math.log1p(288) / lp, 1, 4608 / 8192, 0, 1280 / 8192],
            [1.0, 0, 0, 128 / 128, 10 / 128, 1 / 2, 1 / 3, 1, 1 / 8, 1280 / 8192, 0, 0],
        ]
    )
    np.testing.assert_allclose(feats.static, expected, rtol=1e-9, atol=1e-12)
    obs = feats.build(2, False, 0.25, (0.5, 0.75, 1.0), {"macs": 0.6}, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    np.testing.assert_allclose(
        obs, [*expected[2, :10], 0.25, 0.0, 0.0, 0.5, 0.75, 1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6], rtol=1e-6
    )


def test_env_observation_tracks_decisions_by_hand() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    graph = build_graph(model, (1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    comp = Compressor(model, graph, calibration=[x])
    env = CompressionEnv(comp, (x, y), budgets={"macs": 0.8}, mode="prune", min_keep=0.25, wall="repair")
    obs, _ = env.reset(seed=0)
    assert obs[10] == 0.0 and obs[12] == 1.0 and obs[13] == 1.0  # nothing before, decides, prev at reset
    obs, *_ = env.step(np.array([-1.0], dtype=np.float32))  # the smallest keep: 1 of 4 channels
    assert env.kept[graph.units[0].out_group] == 1
    assert obs[10] == pytest.approx(2304 / 4 / 8192)  # c1 with 1 of 4 filters
    assert obs[13] == pytest.approx(0.25)  # previous step's keep ratio
    assert obs[0] == pytest.approx(0.5) and obs[12] == 1.0
    obs, *_ = env.step(np.array([1.0], dtype=np.float32))  # c2 keeps all 8
    # Before fc: c1 (1 filter) + c2 reading 1 of 4 input channels.
    assert obs[10] == pytest.approx((576 + 4608 / 4) / 8192)
    assert obs[12] == 0.0  # the classifier's outputs are not a decision


# --- closed-form costs ----------------------------------------------------------------------------
def test_depthwise_and_pointwise_macs_by_hand() -> None:
    graph = build_graph(FlattenNet(), (1, 28, 28))
    group = graph.groups[graph.unit("c1").out_group]  # c1's filters, passed through the depthwise conv
    assert group.prunable and graph.unit("dw").out_group == group.index
    kept = graph.full_channels()
    kept[group.index] = 8  # of 16
    macs, weights = CostModel(graph).unit_macs_params(kept)
    by_name = {u.name: (int(macs[u.index]), int(weights[u.index])) for u in graph.units}
    # 14x14 outputs everywhere: c1 8 filters of 1x3x3; dw 8 filters of 1x3x3 (one channel each); pw 8x8 1x1;
    # fc1 reads 8 channels x 196 positions.
    assert by_name["c1"] == (8 * 9 * 196, 8 * 9)
    assert by_name["dw"] == (8 * 9 * 196, 8 * 9)
    assert by_name["pw"] == (8 * 8 * 196, 8 * 8)
    assert by_name["fc1"] == (8 * 196 * 32, 8 * 196 * 32)


# --- hardware: every energy component of one layer ----------------------------------------------
def test_energy_mac_by_precision() -> None:
    e = EnergyModel()
    assert e.mac_pj(8, 8) == pytest.approx(0.2 + 0.1)  # Horowitz: 8-bit mult + 32-bit add
    assert e.mac_pj(4, 2) == pytest.approx(0.2 * 8 / 64 + 0.1)
    assert e.mac_pj(32, 32) == pytest.approx(0.2 * 16 + 0.1)
    assert e.mac_pj(8, 8, float_bits=16) == pytest.approx(1.1 + 0.4)
    assert e.mac_pj(8, 8, float_bits=32) == pytest.approx(3.7 + 0.9)
    assert EnergyModel(acc_bits=16).mac_pj(8, 8) == pytest.approx(0.2 + 0.05)
    assert e.psum_bytes == 4.0


def test_weight_stationary_layer_cost_components_by_hand() -> None:
    acc = SystolicArray(
        rows=4,
        cols=4,
        dataflow="ws",
        name="t",
        frequency_hz=1e9,
        dram_bandwidth_gbps=1.0,
        sram_kib=1,
        static_power_w=0.5,
    )
    c = HardwareModel(acc, [Layer.linear(16, 8)]).layer_cost(0, w_bits=8, a_bits=8)
    # Bytes at 8 bits: weights 16*8, input 16, output 8 -> 152 B, all fit in 1 KiB: moved once.
    assert c.dram_bytes == 152
    # WS: ceil(16/4) * ceil(8/4) = 8 folds of (2*4 + 4 + 1 - 2) cycles, minus 1.
    assert c.compute_cycles == 87
    assert c.cycles == 152 and c.bound == "memory"  # 1 byte per cycle
    assert c.latency_s == pytest.approx(152e-9)
    assert c.mac_energy_j == pytest.approx(128 * 0.3e-12)
    # SRAM: weights once (one row of P), input once per 2 column tiles, outputs once plus 3 extra K folds
    # of a 4-byte partial sum written and read, plus every DRAM byte through the buffer.
    sram = 128 + 16 * 2 + 8 * (1 + 3 * 2 * 4) + 152
    assert c.sram_bytes == sram
    assert c.sram_energy_j == pytest.approx(sram * 1.25e-12)
    assert c.dram_energy_j == pytest.approx(152 * 160e-12)
    assert c.static_energy_j == pytest.approx(0.5 * 152e-9)
    assert c.energy_j == pytest.approx((128 * 0.3 + sram * 1.25 + 152 * 160) * 1e-12 + 0.5 * 152e-9)
    assert c.utilisation == pytest.approx(128 / (16 * 152))
    # Unquantized (32) runs at the native 8 bits on this array: the same cost.
    assert HardwareModel(acc, [Layer.linear(16, 8)]).layer_cost(0).energy_j == pytest.approx(c.energy_j)
    # 4-bit weights halve the weight bytes (packed storage) but not the 8-bit datapath's MAC energy.
    c4 = HardwareModel(acc, [Layer.linear(16, 8)]).layer_cost(0, w_bits=4, a_bits=8)
    assert c4.dram_bytes == 64 + 16 + 8 and c4.mac_energy_j == pytest.approx(c.mac_energy_j)
