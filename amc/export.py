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
from torch.utils.flop_counter import FlopCounterMode

from amc.checkpoint import load_file, load_state
from amc.errors import AmcError
from amc.graph import build_graph
from amc.pruning import prune_model
from amc.quantize import ActivationQuantizer
from amc.trust import check_targets
from amc.utils import atomic_torch_save

log = logging.getLogger(__name__)

FORMAT = "amc-compressed-v1"


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """The activation quantizers attached to ``model``'s modules, by module name."""
    out = {}
    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, ActivationQuantizer):
                out[name] = hook
    return out


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
