"""Save, reload and measure a compressed model.

A compressed checkpoint rebuilds the *pruned* architecture without pickled classes: it stores the
dense model's spec (``arch``), the kept channel indices of every group and the activation quantizer
ranges. :func:`load_compressed` instantiates the dense model (only a ``_target_`` that :mod:`amc.trust`
trusts), prunes it with the same indices (torch-pruning, :func:`amc.pruning.prune_model`), loads the
state dict (``weights_only=True``) and re-attaches the quantizers, so the reloaded model computes
exactly what was saved::

    {"format": "amc-compressed-v1", "arch": {...}, "input_shape": [C, H, W], "keep": [[i, ...], ...],
     "policy": {...}, "activation_quant": {unit_name: {"bits", "max_abs", "signed"}}, "state_dict": ...,
     "meta": {...}}
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import statistics
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from amc.checkpoint import load_file, load_state
from amc.cost import FP32
from amc.errors import AmcError
from amc.graph import build_graph
from amc.pruning import prune_model
from amc.quantize import ActivationQuantizer, activation_quantizers
from amc.trust import check_targets
from amc.utils import atomic_torch_save, atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "amc-compressed-v1"


def quantizer_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Plain (``weights_only``-safe) state of every activation quantizer of ``model``."""
    return {
        name: {"bits": q.bits, "max_abs": q.max_abs, "signed": q.signed, "calibrating": q.calibrating}
        for name, q in activation_quantizers(model).items()
    }


def load_quantizer_state(model: nn.Module, state: Mapping[str, Mapping[str, Any]]) -> None:
    """Restore activation quantizer ranges saved by :func:`quantizer_state` (attaching missing quantizers).

    Args:
        model: the model (modules named as when the state was taken).
        state: the saved state.
    """
    existing = activation_quantizers(model)
    modules = dict(model.named_modules())
    for name, s in state.items():
        q = existing.get(name)
        if q is None:
            if name not in modules:
                raise AmcError(f"activation quantizer for unknown layer {name!r}; use a file written for this model")
            q = ActivationQuantizer(int(s["bits"]))
            modules[name].register_forward_pre_hook(q)
        q.bits, q.max_abs, q.signed = int(s["bits"]), float(s["max_abs"]), bool(s["signed"])
        q.calibrating = bool(s.get("calibrating", False))


def save_compressed(
    path: str | Path,
    model: nn.Module,
    arch: Mapping[str, Any],
    input_shape: tuple[int, ...] | list[int],
    keep: list[torch.Tensor],
    policy: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> None:
    """Write a compressed model atomically (see the module docstring for the layout).

    Args:
        path: destination file.
        model: the pruned (and possibly quantized, fine-tuned) model; no parametrizations left.
        arch: the DENSE model's config with ``_target_``.
        input_shape: one sample's shape.
        keep: kept channel indices per group (from :meth:`amc.compress.Compressor.keep`).
        policy: the policy in :meth:`amc.compress.Policy.to_dict` form.
        meta: JSON-like metadata.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": FORMAT,
            "arch": dict(arch),
            "input_shape": [int(s) for s in input_shape],
            "keep": [[int(i) for i in idx] for idx in keep],
            "policy": dict(policy),
            "activation_quant": quantizer_state(model),
            "state_dict": state,
            "meta": dict(meta),
        },
        path,
    )


def load_compressed(
    path: str | Path, activation_quant: bool = True, trust_targets: Iterable[str] = ()
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_compressed` (in eval mode, on CPU).

    Args:
        path: the file.
        activation_quant: re-attach the activation quantizers (``False``: the plain float graph, e.g. for
            ONNX or latency measurements).
        trust_targets: ``_target_`` names to build besides amc's own models (see :mod:`amc.trust`),
            e.g. ``("my.pkg.Net",)`` for a compressed model of your own architecture.
    """
    obj = load_file(path)
    if obj.get("format") != FORMAT or not {"arch", "keep", "state_dict", "input_shape"} <= obj.keys():
        raise AmcError(f"{path} is not an amc compressed model (no {FORMAT} header); point to a compressed.pt")
    check_targets(obj["arch"], path, trust_targets)
    model = instantiate(obj["arch"])
    model.eval()
    graph = build_graph(model, obj["input_shape"], check_routing=False)  # replays indices chosen on a checked graph
    if len(obj["keep"]) != len(graph.groups):
        raise AmcError(f"{path} keeps channels of {len(obj['keep'])} groups, the model has {len(graph.groups)}")
    keep = [torch.as_tensor(idx, dtype=torch.int64) for idx in obj["keep"]]
    prune_model(model, graph, keep)
    load_state(model, obj["state_dict"], str(path))
    if activation_quant:
        load_quantizer_state(model, obj.get("activation_quant", {}))
    model.eval()
    return model, obj


def measure_cost(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> dict[str, int]:
    """MACs per sample (``torch.utils.flop_counter``, FLOPs / 2) and parameter count of ``model``.

    Args:
        model: the model.
        input_shape: one sample's shape.
    """
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_shape), device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return {"macs": counter.get_total_flops() // 2, "params": sum(p.numel() for p in model.parameters())}


def check_cost(measured: Mapping[str, int], expected: Mapping[str, int], what: str) -> None:
    """Raise :class:`AmcError` when measured MACs/params differ from the policy's closed-form costs.

    Args:
        measured: from :func:`measure_cost`.
        expected: ``macs`` and ``params`` from :class:`amc.cost.CostModel`.
        what: the model's description for the message.
    """
    bad = [f"{k} {measured[k]} != {expected[k]}" for k in ("macs", "params") if int(measured[k]) != int(expected[k])]
    if bad:
        raise AmcError(
            f"{what} does not have the policy's cost ({', '.join(bad)}); the pruning and the cost model disagree, "
            "report this model as a bug"
        )


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | list[int]) -> bool:
    """Export the float model to ONNX; returns ``False`` (with a log line) when ``onnx`` is not installed.

    Args:
        model: the model without activation quantizers.
        path: destination ``.onnx`` file.
        input_shape: one sample's shape (the batch dimension is dynamic).
    """
    try:
        import onnx
    except ImportError:
        log.warning("onnx is not installed: skipping the ONNX export; pip install 'amc[onnx]' to get it")
        return False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros((1, *input_shape))
    model.eval()
    tmp = path.with_name(f".{path.name}.tmp")
    # The TorchScript exporter needs only onnx; the dynamo one would also need onnxscript.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    return True


# --- quantized ONNX (QuantizeLinear/DequantizeLinear) ----------------------------------------------
def _qdq_range(bits: int, signed: bool) -> tuple[int, int, int, int, torch.dtype]:
    """(clip min, clip max) of a ``bits``-bit code and the 8-bit type's (min, max, dtype) that carries it."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, -128, 127, torch.int8
    return 0, 2**bits - 1, 0, 255, torch.uint8


class _QDQWeight(nn.Module):
    """Parametrization: a unit's (already fake-quantized) weight through per-channel Q/DQ with its own scales."""

    def __init__(self, w: torch.Tensor, bits: int, symmetric: bool) -> None:
        super().__init__()
        flat = w.detach().reshape(w.shape[0], -1).float()
        eps = torch.finfo(torch.float32).tiny
        lo, hi, self.qmin, self.qmax, self.dtype = _qdq_range(bits, symmetric)
        if symmetric:  # the same scales amc.quantize.quantize_weight used: max |w| / qmax per channel
            scale = (flat.abs().amax(dim=1) / hi).clamp_min(eps)
            zero = torch.zeros(w.shape[0], dtype=torch.int64)
        else:
            low, high = flat.amin(dim=1).clamp_max(0), flat.amax(dim=1).clamp_min(0)
            scale = ((high - low) / hi).clamp_min(eps)
            zero = torch.round(-low / scale).clamp(lo, hi).to(torch.int64)
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        args = (self.scale, self.zero, 0, self.qmin, self.qmax, self.dtype)
        return qd.dequantize_per_channel(qd.quantize_per_channel(w, *args), *args)


class _QDQInput:
    """Forward pre-hook: a unit's input clipped to its ``bits``-bit range, then Q/DQ per tensor (8-bit types)."""

    def __init__(self, bits: int, max_abs: float, signed: bool) -> None:
        lo, hi, self.qmin, self.qmax, self.dtype = _qdq_range(bits, signed)
        self.scale = max_abs / hi  # as amc.quantize.ActivationQuantizer
        self.low, self.high = lo * self.scale, hi * self.scale

    def __call__(self, _module: nn.Module, inputs: tuple) -> tuple:
        qd = torch.ops.quantized_decomposed
        args = (self.scale, 0, self.qmin, self.qmax, self.dtype)
        x = qd.dequantize_per_tensor(qd.quantize_per_tensor(inputs[0].clamp(self.low, self.high), *args), *args)
        return (x, *inputs[1:])


def qdq_model(
    model: nn.Module,
    units: Iterable[Mapping[str, Any]],
    activations: Mapping[str, Mapping[str, Any]],
    symmetric: bool = True,
) -> nn.Module:
    """A copy of the float compressed model whose units compute through explicit quantize/dequantize ops.

    Weights go through per-output-channel Q/DQ with the scales of :func:`amc.quantize.quantize_weight`,
    inputs through a clip to the policy's ``a_bits`` range and per-tensor Q/DQ with the calibrated scale.
    The integer codes of ``b`` < 8 bits are carried by int8 (uint8 when unsigned) with the clip
    restricting them to the ``b``-bit range, so the copy computes what the fake-quantized model computes.

    Args:
        model: the compressed model without activation quantizers (its weights already on their grids).
        units: the policy's units (``name``, ``w_bits``; :meth:`amc.compress.Policy.to_dict`).
        activations: the activation quantizer states by unit name (:func:`quantizer_state`).
        symmetric: the weights were quantized symmetrically.
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401 -- registers torch.ops.quantized_decomposed

    model = copy.deepcopy(model).cpu().eval()
    modules = dict(model.named_modules())
    for unit in units:
        bits, m = int(unit["w_bits"]), modules[str(unit["name"])]
        if bits > 8 and bits < FP32:
            log.warning("%s has %d-bit weights: kept in float in the quantized ONNX graph", unit["name"], bits)
        if bits <= 8:
            parametrize.register_parametrization(m, "weight", _QDQWeight(m.weight, bits, symmetric))
    for name, state in activations.items():
        bits = int(state["bits"])
        if bits <= 8 and float(state["max_abs"]) > 0:
            modules[name].register_forward_pre_hook(_QDQInput(bits, float(state["max_abs"]), bool(state["signed"])))
    return model


def export_quantized_onnx(
    model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | list[int], policy: Mapping[str, Any]
) -> bool:
    """Export a :func:`qdq_model` with ``torch.onnx.export(..., dynamo=True)``; ``False`` when onnxscript is missing.

    The graph holds QuantizeLinear/DequantizeLinear pairs (per-channel weights, per-tensor inputs) and a Clip
    before each input's pair; ``onnx.checker`` checks it, and the policy's per-unit bits are stored in the
    model's metadata (``amc.policy``).

    Args:
        model: a :func:`qdq_model`.
        path: destination ``.onnx`` file.
        input_shape: one sample's shape (the batch dimension is dynamic).
        policy: the policy dict, stored as metadata.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 -- the dynamo exporter's op library
    except ImportError as exc:
        log.warning("%s is not installed: skipping the quantized ONNX export; pip install 'amc[onnx]'", exc.name)
        return False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    x = torch.zeros((2, *input_shape))
    # The exporter and its IR passes log every step at INFO ("Replaced initializer ..."): dozens of lines
    # in the command's log for one export. Only their errors are kept.
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                dynamo=True,
                external_data=False,
            )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    graph = onnx.load(str(tmp))
    units = [{k: u[k] for k in ("name", "w_bits", "a_bits")} for u in policy.get("units", [])]
    onnx.helper.set_model_props(graph, {"amc.policy": json.dumps({"units": units})})
    onnx.checker.check_model(graph, full_check=True)
    atomic_write_bytes(path, graph.SerializeToString())
    tmp.unlink(missing_ok=True)
    return True


@torch.no_grad()
def compare_onnx(path: str | Path, model: nn.Module, loader: Iterable[Any]) -> dict[str, float] | None:
    """Top-1 of the ONNX graph (onnxruntime) and of ``model`` on ``loader``; ``None`` without onnxruntime.

    Args:
        path: an ``.onnx`` file with input ``input``.
        model: the fake-quantized model it was exported from.
        loader: (inputs, labels) batches, e.g. the test split.
    """
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: the quantized ONNX graph is not compared; pip install 'amc[onnx]'")
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = model.cpu().eval()
    hits_onnx = hits_torch = same = n = 0
    for x, y in loader:
        ours = session.run(None, {"input": x.numpy()})[0].argmax(axis=1)
        theirs = model(x).argmax(dim=1).numpy()
        labels = y.numpy()
        hits_onnx += int((ours == labels).sum())
        hits_torch += int((theirs == labels).sum())
        same += int((ours == theirs).sum())
        n += len(labels)
    n = max(n, 1)
    return {
        "onnx_top1": hits_onnx / n,
        "fake_quant_top1": hits_torch / n,
        "top1_diff": (hits_onnx - hits_torch) / n,
        "agreement": same / n,
    }


@torch.no_grad()
def cpu_latency(
    model: nn.Module, input_shape: tuple[int, ...] | list[int], repeats: int = 50, warmup: int = 5
) -> float:
    """Median wall-clock seconds of one batch-1 forward pass on the CPU.

    Args:
        model: the model (moved to the CPU, eval mode).
        input_shape: one sample's shape.
        repeats: timed runs.
        warmup: untimed runs first.
    """
    model = model.cpu().eval()
    x = torch.randn((1, *input_shape))
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
