"""What a fine-tuning writes: the verified compressed model, its ONNX files and the before/after report.

:func:`export` saves ``compressed.pt``, reloads it (only trusted ``_target_`` names, :func:`trusted_targets`),
checks that it reproduces the fine-tuned model and that its measured MACs/params equal the policy's
closed-form costs, writes ``model.onnx`` and ``model_qdq.onnx`` and measures simulated and CPU latency;
:func:`print_report` logs the before/after table. Used by :mod:`amc.finetune` and :mod:`amc.rounds`.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tabulate import tabulate
from torch import nn

from amc.compress import Policy
from amc.cost import FP32, CostModel
from amc.data import DataModule
from amc.envs.budget import CostEvaluator
from amc.errors import AmcError
from amc.export import (
    check_cost,
    compare_onnx,
    cpu_latency,
    export_onnx,
    export_quantized_onnx,
    load_compressed,
    measure_cost,
    qdq_model,
    quantizer_state,
    save_compressed,
)
from amc.graph import ModelGraph
from amc.hardware import HardwareModel
from amc.pretrain import arch_spec
from amc.trust import targets_in, trusted_names
from amc.utils import format_si

log = logging.getLogger(__name__)

STATE_FILE = "finetune_state.pt"  # the resumable fine-tuning state (amc.training.fit)
QDQ_FILE = "model_qdq.onnx"  # the quantized graph (QuantizeLinear/DequantizeLinear), beside the float model.onnx


def trusted_targets(cfg: DictConfig) -> tuple[str, ...]:
    """What a compressed file of this run may name: the command line's ``trust_targets`` and the model's targets.

    ``cfg.model`` came from the command line or from a search config that passed :func:`search_config`'s
    check, and it has been built already; a ``compressed.pt`` of this run (or a round of an interrupted
    one) naming anything else is refused.

    Args:
        cfg: the finetune config, merged with the search's options.
    """
    return (*trusted_names(cfg.get("trust_targets")), *targets_in(cfg.model))


def cost_evaluator(graph: ModelGraph, accelerator: Any | None) -> CostEvaluator:
    """The closed-form costs of ``graph`` (and its simulated latency/energy on ``accelerator``, when given).

    Args:
        graph: the model's graph.
        accelerator: the hardware preset, or ``None``.
    """
    hw = HardwareModel(accelerator, graph.units) if accelerator is not None else None
    return CostEvaluator(CostModel(graph), hw)


def _sim(hw: HardwareModel | None, cost_model: CostModel, kept: list[int], w: list[int], a: list[int]) -> dict:
    if hw is None:
        return {"latency_s": None, "energy_j": None}
    c_in, c_out = cost_model.unit_channels(kept)
    mc = hw.model_cost([int(c) for c in c_in], [int(c) for c in c_out], list(w), list(a))
    return {"latency_s": mc.latency_s, "energy_j": mc.energy_j}


def export(
    cfg: DictConfig,
    out: Path,
    model: nn.Module,
    dense: nn.Module,
    graph: ModelGraph,
    policy: Policy,
    keep: list[torch.Tensor],
    data: DataModule,
    policy_dict: dict[str, Any],
    base_meta: dict[str, Any],
) -> dict[str, Any]:
    """Save the compressed model, reload it, check its costs and measure it (see :func:`finetune`)."""
    model.cpu().eval()
    dense.cpu().eval()
    path = out / "compressed.pt"
    save_compressed(
        path,
        model,
        arch_spec(cfg.model),
        data.input_shape,
        keep,
        policy_dict,
        {"baseline": base_meta.get("path"), "seed": int(cfg.seed)},
    )
    reloaded, _ = load_compressed(path, trust_targets=trusted_targets(cfg))
    x = next(iter(data.test_loader()))[0][:8]
    with torch.no_grad():
        if not torch.equal(reloaded(x), model(x)):
            raise AmcError(f"{path} does not reproduce the fine-tuned model's outputs; report this as a bug")
    cost_model = CostModel(graph)
    expected = cost_model.cost(policy.kept, policy.w_bits, policy.a_bits)
    measured = measure_cost(reloaded, data.input_shape)
    check_cost(measured, {"macs": expected.macs, "params": expected.params}, f"exported model {path}")
    float_model, _ = load_compressed(path, activation_quant=False, trust_targets=trusted_targets(cfg))
    onnx_path = out / "model.onnx"
    onnx_ok = bool(cfg.export.onnx) and export_onnx(float_model, onnx_path, data.input_shape)
    qdq_path, qdq = out / QDQ_FILE, None
    quantized = any(int(u["w_bits"]) < FP32 or int(u["a_bits"]) < FP32 for u in policy_dict["units"])
    if onnx_ok and quantized and bool(cfg.export.get("quantized_onnx", True)):
        symmetric = bool(cfg.compress.symmetric)
        graph_model = qdq_model(float_model, policy_dict["units"], quantizer_state(reloaded), symmetric)
        try:
            exported = export_quantized_onnx(graph_model, qdq_path, data.input_shape, policy_dict)
        except Exception as exc:  # noqa: BLE001 -- an exporter limit must not cost the fine-tuned model
            detail = " ".join(str(exc).split())[:160]
            log.warning(
                "quantized ONNX export failed (%s: %s); compressed.pt and model.onnx are fine",
                type(exc).__name__,
                detail,
            )
            exported = False
        if exported:
            batches = cfg.export.get("compare_batches")
            loader = data.test_loader()
            test = loader if batches is None else itertools.islice(loader, int(batches))
            qdq = {"path": str(qdq_path), **(compare_onnx(qdq_path, reloaded, test) or {})}

    hw = None
    if cfg.get("hardware") is not None:
        hw = HardwareModel(instantiate(cfg.hardware), graph.units)
    n = len(graph.units)
    dense_kept = graph.full_channels()
    dense_cost = cost_model.dense
    repeats = int(cfg.export.latency_repeats)
    return {
        "files": {
            "model": str(path),
            "onnx": str(onnx_path) if onnx_ok else None,
            "onnx_qdq": str(qdq_path) if qdq else None,
        },
        "onnx_qdq": qdq,
        "hardware": str(cfg.hardware.get("name", cfg.hardware.get("_target_"))) if hw is not None else None,
        "dense": {
            "macs": dense_cost.macs,
            "params": dense_cost.params,
            "size_bits": dense_cost.size_bits,
            **_sim(hw, cost_model, dense_kept, [FP32] * n, [FP32] * n),
            "cpu_latency_s": cpu_latency(dense, data.input_shape, repeats),
        },
        "compressed": {
            "macs": measured["macs"],
            "params": measured["params"],
            "size_bits": expected.size_bits,
            "bitops": expected.bitops,
            **_sim(hw, cost_model, policy.kept, policy.w_bits, policy.a_bits),
            "cpu_latency_s": cpu_latency(float_model, data.input_shape, repeats),
        },
    }


def print_report(report: dict[str, Any]) -> None:
    """Log the before/after table of a fine-tuning report and where the files are (console and finetune.log)."""
    acc = report["accuracy"]
    d, c = report["dense"], report["compressed"]

    def fmt(v: float | None, scale: float = 1.0, spec: str = ".3f") -> str:
        return "-" if v is None else format(v * scale, spec)

    rows = [
        [
            "test top-1 (%)",
            fmt(acc["dense"]["top1"], 100, ".2f"),
            fmt(acc["before_finetune"]["top1"], 100, ".2f"),
            fmt(acc["after_finetune"]["top1"], 100, ".2f"),
        ],
        ["MACs (M)", fmt(d["macs"], 1e-6), fmt(c["macs"], 1e-6), fmt(c["macs"], 1e-6)],
        ["params (k)", fmt(d["params"], 1e-3), fmt(c["params"], 1e-3), fmt(c["params"], 1e-3)],
        ["size (KiB)", fmt(d["size_bits"], 1 / 8192), fmt(c["size_bits"], 1 / 8192), fmt(c["size_bits"], 1 / 8192)],
    ]
    simulated = (
        [
            (f"sim. latency ({report['hardware']})", "latency_s", "s"),
            (f"sim. energy ({report['hardware']})", "energy_j", "J"),
        ]
        if report.get("hardware") is not None  # ~hardware: no simulated rows
        else []
    )
    for label, key, unit in (*simulated, ("CPU latency, batch 1", "cpu_latency_s", "s")):
        rows.append([label, *(format_si(v, unit, reference=d[key]) for v in (d[key], c[key], c[key]))])
    table = tabulate(rows, headers=["", "original", "compressed", "fine-tuned"], tablefmt="github")
    files = f"compressed model: {report['files']['model']}" + (
        f", ONNX: {report['files']['onnx']}" if report["files"]["onnx"] else ""
    )
    qdq = report.get("onnx_qdq") or {}
    if qdq.get("onnx_top1") is not None:
        files += (
            f"\nquantized ONNX {qdq['path']}: test top-1 {100 * qdq['onnx_top1']:.2f}% in onnxruntime vs "
            f"{100 * qdq['fake_quant_top1']:.2f}% fake-quantized ({100 * qdq['top1_diff']:+.2f} points; "
            f"{100 * qdq['agreement']:.2f}% same predictions)"
        )
    elif qdq:
        files += f"\nquantized ONNX {qdq['path']} (not compared: onnxruntime is not installed)"
    log.info("fine-tuning finished:\n%s\n%s", table, files)
