"""Tests of the analytical hardware model (amc.hardware): SCALE-Sim cycle references, precision regimes,
roofline, step effect, presets, lookup tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from amc.errors import AmcError
from amc.hardware import (
    Accelerator,
    BitFusionArray,
    BitSerialArray,
    HardwareModel,
    Layer,
    LayerSpec,
    SystolicArray,
    TableHardwareModel,
    build_table,
    channel_grid,
    list_presets,
    load_preset,
    load_table,
    lower,
    round_channels,
    save_table,
)

REFS = Path(__file__).parent / "data" / "scalesim_refs.json"
COMMON = {"name": "test", "frequency_hz": 1e9, "dram_bandwidth_gbps": 10.0, "sram_kib": 192}


def brief_layer(c_out: int = 64) -> Layer:
    """The 3x3 conv, 58x58 input, 56x56 output, C_in 64 layer of the SCALE-Sim references."""
    return Layer.conv(64, c_out, 3, 56, in_hw=58, name=f"conv_c{c_out}")


def systolic(dataflow: str, rows: int = 32, cols: int = 32) -> SystolicArray:
    return SystolicArray(rows=rows, cols=cols, dataflow=dataflow, **COMMON)


def cycles(acc: Accelerator, layer: Layer, w: int = 8, a: int = 8) -> int:
    """Compute cycles of the dense layer at (w, a) bits."""
    gemm = lower(layer, layer.in_channels, layer.out_channels)
    return acc.compute_cycles(gemm, acc.resolve(w, a))


def small_model() -> list[Layer]:
    return [
        Layer.conv(3, 32, 3, 32, name="conv1"),
        Layer.conv(32, 32, 3, 32, groups=32, name="dw2"),
        Layer.conv(32, 64, 1, 32, name="pw2"),
        Layer.conv(64, 128, 3, 16, stride=2, name="conv3"),
        Layer.linear(128, 10, name="fc"),
    ]


# --------------------------------------------------------------------------------------------------
# SCALE-Sim references
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("c_out", "expected"),
    [(16, 58_139), (32, 58_139), (33, 116_279), (48, 116_279), (64, 116_279), (65, 174_419), (96, 174_419)],
)
def test_weight_stationary_matches_scalesim(c_out: int, expected: int) -> None:
    assert cycles(systolic("ws"), brief_layer(c_out)) == expected


def test_output_stationary_matches_scalesim() -> None:
    assert cycles(systolic("os"), brief_layer(64)) == 125_047


def _ref_layer(d: dict) -> Layer:
    return Layer(
        d["kind"],
        d["in_channels"],
        d["out_channels"],
        tuple(d["kernel_size"]),
        tuple(d["stride"]),
        d["groups"],
        tuple(d["in_hw"]),
        tuple(d["out_hw"]),
        d["depthwise"],
        d["name"],
    )


def test_generated_scalesim_references_match() -> None:
    doc = json.loads(REFS.read_text())
    refs = doc["references"]
    assert len(refs) >= 10
    kinds = {(r["layer"]["kind"], r["layer"]["depthwise"], r["dataflow"]) for r in refs}
    assert ("linear", False, "os") in kinds and ("conv", True, "ws") in kinds
    mismatches = []
    for r in refs:
        acc = systolic(r["dataflow"], *r["array"])
        got = cycles(acc, _ref_layer(r["layer"]))
        if got != r["compute_cycles"]:
            mismatches.append((r["id"], got, r["compute_cycles"]))
    assert not mismatches


def test_presets_reproduce_scalesim_and_step_effect() -> None:
    hw = HardwareModel(load_preset("systolic_ws_32x32"), [brief_layer(96)])
    costs = {c: hw.layer_cost(0, 64, c, 8, 8).compute_cycles for c in range(16, 97)}
    assert costs[16] == costs[32] == 58_139
    assert len({costs[c] for c in range(33, 65)}) == 1 and costs[33] == 116_279
    assert costs[65] == costs[96] == 174_419


# --------------------------------------------------------------------------------------------------
# Step effect and channel rounding
# --------------------------------------------------------------------------------------------------
def test_step_effect_on_latency() -> None:
    layer = brief_layer(128)
    for name in ("systolic_ws_32x32", "bitfusion_edge", "npu_int8_int4"):
        hw = HardwareModel(load_preset(name), [layer])
        assert hw.channel_multiple == 32
        lat = {c: hw.layer_cost(0, 64, c, 8, 8).latency_s for c in (32, 33, 48, 64, 65)}
        assert lat[33] == lat[48] == lat[64], name
        assert lat[32] < lat[33] < lat[65], name


def test_round_channels() -> None:
    assert round_channels(33, 32) == 64
    assert round_channels(32, 32) == 32
    assert round_channels(1, 8) == 8
    assert round_channels(70, 32, maximum=64) == 64
    with pytest.raises(AmcError, match=r"round_channels needs c >= 1 .*got c=0, multiple=8"):
        round_channels(0, 8)
    hw = HardwareModel(load_preset("bismo_edge"), small_model())
    assert hw.channel_multiple == 8
    assert hw.round_channels(3, 61) == 64 and hw.round_channels(4, 9) == 10  # fc has 10 outputs


# --------------------------------------------------------------------------------------------------
# Precision regimes
# --------------------------------------------------------------------------------------------------
def test_bit_serial_latency_scales_with_w_times_a() -> None:
    acc = BitSerialArray(dm=8, dk=256, dn=8, tile_overhead_cycles=0, **COMMON)
    base = cycles(acc, brief_layer(), 1, 1)
    for w in range(1, 9):
        for a in range(1, 9):
            assert cycles(acc, brief_layer(), w, a) == w * a * base
    assert cycles(acc, brief_layer(), 32, 32) == 64 * base  # unquantized runs as 8 x 8 bits
    # The preset adds a per-tile overhead, so the scaling is close to, not exactly, w * a.
    preset = load_preset("bismo_edge")
    ratio = cycles(preset, brief_layer(), 8, 8) / cycles(preset, brief_layer(), 2, 4)
    assert ratio == pytest.approx(8.0, rel=0.05)


def test_bitfusion_packing_regimes() -> None:
    acc = BitFusionArray(rows=16, cols=32, **COMMON)
    layer = Layer.conv(256, 64, 3, 28)  # K = 2304, a multiple of 16 rows x 16 fused products
    c = {(w, a): cycles(acc, layer, w, a) for w in range(1, 9) for a in range(1, 9)}
    for a in range(1, 9):
        assert c[(1, a)] == c[(2, a)]
        assert c[(3, a)] == c[(4, a)]
        assert c[(5, a)] == c[(6, a)] == c[(7, a)] == c[(8, a)]
    assert acc.fused(acc.resolve(2, 8))[0] == 4 and acc.fused(acc.resolve(2, 2))[0] == 16
    assert c[(8, 8)] / c[(2, 8)] == pytest.approx(4.0, rel=1e-3)
    assert c[(8, 8)] / c[(4, 8)] == pytest.approx(2.0, rel=1e-3)
    assert c[(8, 8)] / c[(2, 2)] == pytest.approx(16.0, rel=1e-3)
    assert c[(8, 8)] / c[(4, 4)] == pytest.approx(4.0, rel=1e-3)
    assert cycles(acc, layer, 32, 32) == c[(8, 8)]


def test_fixed_precision_npu_rounds_up() -> None:
    acc = load_preset("npu_int8_int4")
    layer = Layer.conv(128, 64, 3, 28)
    c = {b: cycles(acc, layer, b, b) for b in range(1, 9)}
    assert c[1] == c[2] == c[3] == c[4]
    assert c[5] == c[6] == c[7] == c[8] == cycles(acc, layer, 32, 32)
    assert c[4] < c[8]
    assert cycles(acc, layer, 4, 8) == c[8]  # both operands run at the wider mode
    assert acc.peak_ops_per_s(4, 4) == 2 * acc.peak_ops_per_s(8, 8)


def test_gpu_tile_and_wave_quantization() -> None:
    acc = load_preset("gpu_roofline")
    # one 128x128 tile per group; 108 SMs: 108 groups fit one wave, 109 need two
    layer_108 = Layer.conv(108 * 8, 108 * 128, 1, (8, 16), groups=108)
    layer_109 = Layer.conv(109 * 8, 109 * 128, 1, (8, 16), groups=109)
    assert cycles(acc, layer_109) == 2 * cycles(acc, layer_108)
    m128 = Layer.conv(64, 128, 1, (8, 16))
    m129 = Layer.conv(64, 129, 1, (8, 16))
    assert cycles(acc, m129) == cycles(acc, m128)  # 2 tiles still fit one wave
    assert cycles(acc, m128, 4, 4) * 4 == cycles(acc, m128, 32, 32)  # int4 4x fp16 per SM


def test_eyeriss_row_stationary_fills_the_array_on_3x3() -> None:
    hw = HardwareModel(load_preset("eyeriss_like"), [brief_layer(64)])
    cost = hw.layer_cost(0, 64, 64, 8, 8)
    assert cost.compute_cycles * 168 == cost.macs  # 4 PE sets of 3 x 14 PEs, E = 56 in 4 passes
    assert hw.layer_cost(0, 64, 64, 4, 4).compute_cycles == cost.compute_cycles  # fixed 16-bit datapath


# --------------------------------------------------------------------------------------------------
# Roofline, memory traffic, energy
# --------------------------------------------------------------------------------------------------
def test_roofline_flips_compute_to_memory_bound_as_bits_shrink() -> None:
    # Bit Fusion: compute time falls as (8/b)^2 but traffic only as 8/b, so low bits become memory bound.
    hw = HardwareModel(load_preset("bitfusion_edge"), [Layer.conv(256, 256, 1, 7)])
    assert hw.layer_cost(0, w_bits=8, a_bits=8).bound == "compute"
    assert hw.layer_cost(0, w_bits=2, a_bits=2).bound == "memory"


def test_roofline_flips_memory_to_compute_bound_as_bits_shrink() -> None:
    # A fixed int8 array gains nothing in compute from low bits, only in traffic.
    hw = HardwareModel(load_preset("systolic_ws_32x32"), [Layer.linear(4096, 4096)])
    assert hw.layer_cost(0, w_bits=8, a_bits=8).bound == "memory"
    low = hw.layer_cost(0, w_bits=1, a_bits=8)
    assert low.bound == "compute"
    assert low.latency_s < hw.layer_cost(0, w_bits=8, a_bits=8).latency_s


def test_dram_refetch_when_operands_do_not_fit() -> None:
    acc = load_preset("systolic_ws_32x32")
    w, i, o = 400e3, 300e3, 100e3  # weights alone exceed half of the 192 KiB buffer
    traffic = acc.dram_traffic(w, i, o)
    assert traffic > w + i + o
    assert acc.dram_traffic(10e3, 10e3, 10e3) == 30e3


def test_layer_cost_fields_are_consistent() -> None:
    for name in list_presets():
        acc = load_preset(name)
        hw = HardwareModel(acc, small_model())
        for i in range(len(hw)):
            for w, a in ((32, 32), (8, 8), (4, 6), (2, 2)):
                c = hw.layer_cost(i, None, None, w, a)
                parts = c.mac_energy_j + c.sram_energy_j + c.dram_energy_j + c.static_energy_j
                assert c.energy_j == pytest.approx(parts)
                assert c.latency_s == pytest.approx(c.cycles / acc.frequency_hz)
                assert c.cycles >= max(c.compute_cycles, 1)
                assert 0 < c.utilisation <= 1.0 + 1e-9, (name, i, w, a)
                assert c.bound in ("compute", "memory")
                assert c.dram_bytes > 0 and c.macs > 0
        total = hw.model_cost()
        assert total.latency_s == pytest.approx(sum(x.latency_s for x in total.layers))


def test_energy_falls_with_bits() -> None:
    hw = HardwareModel(load_preset("bitfusion_edge"), small_model())
    full = hw.model_cost(w_bits_list=[8] * 5, a_bits_list=[8] * 5)
    low = hw.model_cost(w_bits_list=[4] * 5, a_bits_list=[4] * 5)
    assert low.mac_energy_j < full.mac_energy_j
    assert low.dram_energy_j < full.dram_energy_j
    assert low.energy_j < full.energy_j and low.latency_s < full.latency_s


def test_lowering_groups() -> None:
    dw = Layer.conv(32, 32, 3, 16, groups=32)
    assert dw.depthwise
    g = lower(dw, 20, 20)
    assert (g.groups, g.k, g.m) == (20, 9, 1)
    grouped = Layer.conv(64, 64, 3, 16, groups=4)
    g = lower(grouped, 48, 32)
    assert (g.groups, g.k, g.m) == (4, 12 * 9, 8)
    fc = lower(Layer.linear(128, 10), 100, 10, batch=16)
    assert (fc.groups, fc.p, fc.k, fc.m, fc.macs) == (1, 16, 100, 10, 16 * 100 * 10)
    assert isinstance(Layer.linear(3, 4), LayerSpec)


def test_batch_follows_preset() -> None:
    cloud = HardwareModel(load_preset("bismo_cloud"), small_model())
    assert cloud.batch == 16
    edge = HardwareModel(load_preset("bismo_cloud"), small_model(), batch=1)
    assert cloud.layer_cost(0).macs == 16 * edge.layer_cost(0).macs


# --------------------------------------------------------------------------------------------------
# Errors and presets
# --------------------------------------------------------------------------------------------------
def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(AmcError, match=r"tpu_v9") as err:
        load_preset("tpu_v9")
    msg = str(err.value)
    assert "tpu_v9" in msg and "bitfusion_edge" in msg and "\n" not in msg


def test_required_presets_exist_and_override() -> None:
    names = set(list_presets())
    assert {
        "bitfusion_edge",
        "bismo_edge",
        "bismo_cloud",
        "systolic_ws_32x32",
        "systolic_os_32x32",
        "eyeriss_like",
        "npu_int8_int4",
        "gpu_roofline",
    } <= names
    acc = load_preset("bitfusion_edge", batch=4)
    assert acc.batch == 4
    with pytest.raises(AmcError, match=r"cannot build hardware 'bitfusion_edge'.*no_such_parameter"):
        load_preset("bitfusion_edge", no_such_parameter=1)
    with pytest.raises(AmcError, match=r"frequency_hz=-1 must be positive"):
        load_preset("bitfusion_edge", frequency_hz=-1)


def test_preset_yaml_numbers_cite_sources() -> None:
    from amc.hardware.presets import preset_dir

    for path in preset_dir().glob("*.yaml"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith(("_target_", "name:")):
                continue
            assert "#" in line, f"{path.name}: '{stripped}' has no source comment"


def test_bad_queries_raise_amc_error() -> None:
    hw = HardwareModel(load_preset("bitfusion_edge"), small_model())
    with pytest.raises(AmcError, match=r"w_bits=17 is not supported; use an integer in 1..16"):
        hw.layer_cost(0, 3, 32, 17, 8)
    with pytest.raises(AmcError, match=r"a_bits=0 is not supported"):
        hw.layer_cost(0, 3, 32, 8, 0)
    # Wider than 8 bits, Bit Fusion runs ceil(w/8) * ceil(a/8) temporal passes (its 16-bit mode, HAQ's range).
    wide, native = hw.layer_cost(1, 32, 32, 16, 16), hw.layer_cost(1, 32, 32, 8, 8)
    assert wide.compute_cycles == 4 * native.compute_cycles  # 2 x 2 passes
    assert hw.layer_cost(1, 32, 32, 12, 8).compute_cycles == hw.layer_cost(1, 32, 32, 16, 8).compute_cycles
    with pytest.raises(AmcError, match=r"unit index 7 out of range; the model has 5 units"):
        hw.layer_cost(7, 3, 32, 8, 8)
    with pytest.raises(AmcError, match=r"kept channels must be >= 1 \(got c_in=3, c_out=0\)"):
        hw.layer_cost(0, 3, 0, 8, 8)
    with pytest.raises(AmcError, match=r"c_in_list has 4 entries but the model has 5 units"):
        hw.model_cost([3] * 4)


# --------------------------------------------------------------------------------------------------
# Lookup tables
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_table_round_trip_is_identical(tmp_path: Path, suffix: str) -> None:
    units = small_model()
    hw = HardwareModel(load_preset("bismo_edge"), units)
    table = build_table(hw, max_points=3, bits=(2, 4, 8, 32))
    path = save_table(table, tmp_path / f"t{suffix}")
    loaded = TableHardwareModel(path, units)
    assert loaded.table.bits == [2, 4, 8, 32]
    for i, t in enumerate(table.tables):
        for ci in t.c_in:
            for co in t.c_out:
                for w in (2, 4, 8, 32):
                    for a in (2, 8):
                        want = hw.layer_cost(i, ci, co, w, a)
                        got = loaded.layer_cost(i, ci, co, w, a)
                        assert got.latency_s == want.latency_s
                        assert got.energy_j == want.energy_j
                        assert got.dram_bytes == want.dram_bytes
                        assert got.bound == want.bound
                        assert got.macs == want.macs
    policy = ([3, 32, 32, 64, 128], [32, 32, 64, 128, 10], [4] * 5, [8] * 5)
    assert loaded.model_cost(*policy).latency_s == hw.model_cost(*policy).latency_s


def test_table_lookup_rounds_up_to_grid(tmp_path: Path) -> None:
    units = small_model()
    hw = HardwareModel(load_preset("bitfusion_edge"), units)
    table = build_table(hw, max_points=4, bits=(4, 8))
    assert table.tables[3].c_out == [32, 64, 96, 128]
    tm = TableHardwareModel(table, units)
    assert tm.layer_cost(3, 64, 33, 8, 8).latency_s == hw.layer_cost(3, 64, 64, 8, 8).latency_s
    with pytest.raises(AmcError, match=r"bits \(2, 8\) are not in the table's bit axis \[4, 8\]"):
        tm.layer_cost(3, 64, 64, 2, 8)  # 2 bits not in this table's axis


def test_wrong_table_for_model(tmp_path: Path) -> None:
    units = small_model()
    table = build_table(HardwareModel(load_preset("bismo_edge"), units), max_points=1)
    path = save_table(table, tmp_path / "t.npz")
    with pytest.raises(AmcError, match="units"):
        TableHardwareModel(path, units[:-1])
    changed = [*units[:-1], Layer.linear(128, 100, name="fc")]
    with pytest.raises(AmcError, match="out_channels"):
        TableHardwareModel(path, changed)
    with pytest.raises(AmcError, match=r"missing.npz not found"):
        load_table(tmp_path / "missing.npz")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(AmcError, match=r"bad.json is not an amc hardware table"):
        load_table(bad)


def test_channel_grid() -> None:
    assert channel_grid(64, 32, 8) == [32, 64]
    assert channel_grid(3, 32, 8) == [3]
    assert channel_grid(512, 8, 8) == [64, 128, 192, 256, 320, 384, 448, 512]
    assert channel_grid(100, 8, 4) == [32, 64, 96, 100]


# --------------------------------------------------------------------------------------------------
# Speed (loose bounds; benchmarks/hardware_speed.py measures properly)
# --------------------------------------------------------------------------------------------------
def test_cached_queries_are_fast() -> None:
    units = [Layer.conv(64, 64, 3, 16, name=f"c{i}") for i in range(20)]
    hw = HardwareModel(load_preset("bitfusion_edge"), units)
    policy = ([64] * 20, [48] * 20, [4] * 20, [6] * 20)
    hw.model_cost(*policy)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        hw.model_cost(*policy)
    assert (time.perf_counter() - start) / n < 1e-3


# --------------------------------------------------------------------------------------------------
# Report and CLI
# --------------------------------------------------------------------------------------------------
def test_policy_file_and_plots(tmp_path: Path) -> None:
    from amc.hardware.report import (
        format_table,
        load_policy,
        plot_latency_breakdown,
        plot_roofline,
        policy_lists,
    )

    units = small_model()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(
        json.dumps(
            {
                "units": [
                    {"name": "conv1", "in_channels": 3, "out_channels": 16, "w_bits": 8, "a_bits": 8},
                    {"name": "conv3", "in_channels": 64, "out_channels": 96, "w_bits": 4, "a_bits": 4},
                ]
            }
        )
    )
    policy = load_policy(policy_file, units)
    assert [p.out_channels for p in policy] == [16, 32, 64, 96, 10]
    assert policy[1].w_bits == 32  # not listed: dense, unquantized
    hw = HardwareModel(load_preset("bitfusion_edge"), units)
    dense, after = hw.model_cost(), hw.model_cost(*policy_lists(policy))
    assert after.latency_s < dense.latency_s
    text = format_table(after, policy)
    assert "conv3" in text and "64/96" in text and "total" in text
    runs = [("dense", dense), ("policy", after)]
    assert plot_roofline(hw, runs, tmp_path / "roofline.png").stat().st_size > 0
    assert plot_latency_breakdown(runs, tmp_path / "bars.png").stat().st_size > 0

    for bad, message in (
        ({"units": [{"name": "nope"}]}, r"unit 'nope' is not in the model; its units are conv1"),
        ({"units": [{"name": "conv1", "out_channels": 64}]}, r"conv1.out_channels=64 must be in 1..32"),
        ({"units": [{"name": "conv1", "w_bits": 17}]}, r"conv1.w_bits=17 is not supported"),
        ({"layers": []}, r'needs \{"units": \[...\]\}'),
    ):
        policy_file.write_text(json.dumps(bad))
        with pytest.raises(AmcError, match=message):
            load_policy(policy_file, units)


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hydra import compose, initialize_config_module

    from amc.graph import build_graph
    from amc.hardware.__main__ import hardware_report
    from amc.models import build_model

    units = build_graph(build_model("fmnist_cnn", num_classes=10, in_channels=1), (1, 28, 28)).units
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(
        json.dumps(
            {
                "units": [
                    {
                        "name": u.name,
                        "in_channels": u.in_channels,
                        "out_channels": u.out_channels,
                        "w_bits": 4,
                        "a_bits": 4,
                    }
                    for u in units
                ]
            }
        )
    )
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("hardware_report", overrides=["hardware=systolic_ws_32x32", f"policy={policy_file}", "batch=4"])
    results = hardware_report(cfg, out_dir=tmp_path)
    assert set(results) == {"dense", "policy"}
    assert results["policy"].energy_j < results["dense"].energy_j
    assert (tmp_path / "roofline.png").is_file() and (tmp_path / "latency_breakdown.png").is_file()
    out = capsys.readouterr().out
    assert "systolic_ws_32x32" in out and "util %" in out
    assert ", batch=4," in out.splitlines()[0] and out.splitlines()[1].endswith("batch 4")  # the batch costed


def test_hand_written_policy_channels_must_chain_through_the_model(tmp_path: Path) -> None:
    from amc.compress import Policy
    from amc.graph import build_graph
    from amc.hardware.__main__ import check_channel_chain
    from amc.hardware.report import load_policy
    from amc.models import build_model

    graph = build_graph(build_model("resnet20", num_classes=10, in_channels=3), (3, 32, 32), check_routing=False)
    kept = [max(1, c // 2) if g.prunable else c for g, c in zip(graph.groups, graph.full_channels())]
    n = len(graph.units)
    doc = Policy.of(kept, [4] * n, [4] * n).to_dict(graph)  # what a search writes: it chains
    path = tmp_path / "policy.json"

    def check(d: dict) -> None:
        path.write_text(json.dumps(d))
        check_channel_chain(load_policy(path, graph.units), graph, path)

    check(doc)
    broken = json.loads(json.dumps(doc))
    consumer = next(u for u in broken["units"] if u["in_channels"] < u["dense_in_channels"])
    consumer["in_channels"] = consumer["dense_in_channels"]  # reads more than the unit before it writes
    with pytest.raises(
        AmcError, match=rf"{consumer['name']}.in_channels={consumer['dense_in_channels']}, .* set in_channels"
    ):
        check(broken)
    summed = next(g for g in graph.groups if len(g.producers) > 1)  # a residual sum: its writers keep one count
    broken = json.loads(json.dumps(doc))
    broken["units"][summed.producers[-1]]["out_channels"] -= 1
    with pytest.raises(AmcError, match=r"write one channel group .* give them one out_channels"):
        check(broken)
