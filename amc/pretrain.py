"""``python -m amc.pretrain``: train a baseline model and cache it.

The cache key is a hash of the model spec, the data (dataset, search split), the recipe and the seed,
so a changed recipe trains a new checkpoint and an unchanged one loads instantly. Training writes a
resumable state after every epoch; an interrupted run continues from the last finished epoch.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from amc.checkpoint import config_hash, load_checkpoint, load_file, load_state, save_checkpoint, weights_budget
from amc.cli import hydra_entry, progress_bar, run_cli, run_tensorboard
from amc.data import DataModule
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.graph import build_graph
from amc.models import accepted_arguments
from amc.schema import check_config
from amc.training import Recipe, fit
from amc.utils import resolve_device, wait_for_lock

log = logging.getLogger(__name__)

RECIPE_KEYS = ("epochs", "lr", "momentum", "weight_decay", "nesterov", "label_smoothing", "batch_size")


def arch_spec(model_cfg: DictConfig) -> dict[str, Any]:
    """The model's config as a plain dict: what gets built, and the architecture spec stored in checkpoints.

    The model configs pass ``num_classes`` and ``in_channels`` from the data config; a user's model
    (``model._target_=my.pkg.Net``) whose constructor takes neither (nor ``**kwargs``) gets them
    dropped here (:func:`amc.models.accepted_arguments`), so build models as ``instantiate(arch_spec(cfg.model))``.

    Args:
        model_cfg: the ``model`` config node (with ``_target_``).
    """
    spec = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(spec, dict)
    return accepted_arguments(spec)


def baseline_seed(cfg: DictConfig) -> int:
    """The baseline's seed: ``pretrain.seed`` (default 0, so search seeds share one baseline), or the run's ``seed``
    when that is null."""
    seed = cfg.pretrain.get("seed")
    return int(cfg.seed if seed is None else seed)


def checkpoint_path(cfg: DictConfig, data: DataModule) -> Path:
    """Where the pretrained checkpoint for this model, data, recipe and seed is cached.

    Args:
        cfg: the composed config.
        data: the data module (its identity enters the key).
    """
    arch = arch_spec(cfg.model)
    recipe = {k: cfg.pretrain.get(k) for k in RECIPE_KEYS}
    data_id = {
        "name": data.name,
        "input_shape": list(data.input_shape),
        "search_size": data.search_size,
        "split_seed": data.split_seed,
    }
    key = config_hash(arch, data_id, recipe, baseline_seed(cfg))
    model_name = str(arch["_target_"]).rsplit(".", 1)[-1]
    return Path(cfg.paths.cache_dir) / "pretrained" / f"{model_name}-{data.name}-{key}.pt"


def train_baseline(cfg: DictConfig, model: nn.Module, data: DataModule, path: Path) -> dict[str, Any]:
    """Train ``model`` with the ``pretrain`` recipe, resuming from ``path``'s partial state if one exists.

    Args:
        cfg: the composed config.
        model: a freshly built model.
        data: the data module.
        path: the final checkpoint path (the partial state sits beside it).
    """
    device = resolve_device(cfg.device)
    recipe = Recipe.from_cfg(cfg.pretrain)
    model.to(device)
    epochs = int(recipe.epochs)
    if epochs <= 0:
        raise AmcError(f"pretrain.epochs={epochs} must be positive")
    writer = run_tensorboard()  # pretrain/* tags in the run's tb/ (none outside a Hydra command)
    history = fit(
        model,
        data,
        recipe,
        lambda x, y: nn.functional.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing),
        path.with_suffix(".partial.pt"),
        device,
        baseline_seed(cfg),
        "pretrain",
        "pretraining",
        progress=progress_bar(cfg),
        writer=writer,
    )
    test = accuracy(model, data.test_loader(), device, topk=(1, 5) if data.num_classes > 5 else (1,))
    log.info("baseline test top-1 %.4f, loss %.4f", test["top1"], test["loss"])
    if writer is not None:
        writer.add_scalar("pretrain/test_top1", test["top1"], epochs)
        writer.add_scalar("pretrain/test_loss", test["loss"], epochs)
        writer.close()
    train_seconds = sum(h["seconds"] for h in history)
    return {
        "test_top1": test["top1"],
        "test_loss": test["loss"],
        "test": test,
        "epochs": epochs,
        "history": history,
        "train_seconds": train_seconds,
    }


def load_user_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Fill ``model`` with a state dict trained elsewhere (``pretrain.weights=<file>``), read with ``weights_only``.

    Accepts a bare state dict, ``{"state_dict": ...}`` (amc's and most training scripts' layout) and
    ``module.``-prefixed keys of ``DataParallel`` checkpoints. Returns the baseline's metadata (no test
    accuracy: it was not measured here).

    Args:
        model: the freshly built model.
        path: the weights file.
    """
    obj = load_file(path, weights_budget(model), f"model {type(model).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AmcError(f"{path} holds no state dict of tensors; pass pretrain.weights=<a model state_dict file>")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    load_state(model, state, str(path))
    log.info("loaded the user's weights %s", path)
    return {"path": str(path), "cached": False, "user_weights": True}


def load_or_pretrain(cfg: DictConfig, data: DataModule | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained baseline for ``cfg.model`` on ``cfg.data``: from the cache, or trained now.

    Args:
        cfg: the composed config (groups ``model``, ``data``, ``paths``, ``pretrain``).
        data: an already-built data module (built from ``cfg.data`` when omitted).
    """
    data = data if data is not None else instantiate(cfg.data)
    model = instantiate(arch_spec(cfg.model))
    check_model(model, data)
    weights = cfg.pretrain.get("weights")
    if weights:
        return model, load_user_weights(model, Path(str(weights)).expanduser())
    path = checkpoint_path(cfg, data)
    # One process trains a given baseline; another that wants it (a parallel sweep job) waits, then loads it.
    with wait_for_lock(path.with_suffix(".lock"), "training this baseline"):
        return _cached_or_trained(cfg, model, data, path)


def needs_training(cfg: DictConfig, data: DataModule) -> bool:
    """Whether :func:`load_or_pretrain` would train the baseline now (no ``pretrain.weights`` or cached one, or forced).

    Args:
        cfg: the composed config.
        data: the data module.
    """
    if cfg.pretrain.get("weights"):
        return False
    return bool(cfg.pretrain.get("force", False)) or not checkpoint_path(cfg, data).exists()


def check_model(model: nn.Module, data: DataModule) -> None:
    """Refuse, with one line each, a model amc cannot search: compiled, failing on the data, or with the wrong classes.

    Args:
        model: the freshly built model.
        data: its data module.
    """
    if type(model).__name__ == "OptimizedModule":  # torch.compile's wrapper (torch._dynamo.eval_frame)
        raise AmcError(
            f"the model is a torch.compile'd {type(getattr(model, '_orig_mod', model)).__name__}; give amc the plain "
            "model (the factory without torch.compile) and compile the compressed model after amc.finetune"
        )
    build_graph(model, data.input_shape, check_routing=False)  # fails early, with a clear message, on a wrong shape
    was_training = model.training
    model.eval()  # no BatchNorm statistics change
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *data.input_shape))
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape == (2, data.num_classes):
        check_training_output(model, data.input_shape)
    if shape != (2, data.num_classes):
        raise AmcError(
            f"the model outputs {shape} for a batch of 2 images, but {data.name} has {data.num_classes} classes "
            f"(expected (2, {data.num_classes})); set model.num_classes={data.num_classes} or use a classifier "
            "that returns one logit per class"
        )


def check_training_output(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse a model whose training-mode forward returns something other than one logits tensor.

    Inception/GoogLeNet-style models return ``(logits, aux_logits)`` while training; amc's pretraining,
    fine-tuning and in-search fine-tunes train on one tensor, so such a model is refused here, before
    any training, rather than failing in the loss. Runs on a copy (BatchNorm statistics and the global
    RNG, which dropout draws from, stay untouched).

    Args:
        model: the freshly built model.
        input_shape: one sample's shape.
    """
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        out = probe(torch.zeros(2, *input_shape, device=next(probe.parameters()).device))
    if not isinstance(out, torch.Tensor):
        raise AmcError(
            f"the model returns a {type(out).__name__} in training mode, not one logits tensor (e.g. (logits, aux) "
            "of an auxiliary head); amc trains on the logits alone: make the training-mode forward return only "
            "the logits (drop or switch off the auxiliary output)"
        )


def _cached_or_trained(cfg: DictConfig, model: nn.Module, data: DataModule, path: Path) -> tuple[nn.Module, dict]:
    """The cached baseline at ``path``, or ``model`` trained now and cached there (hold the lock on ``path``)."""
    arch = arch_spec(cfg.model)
    if path.exists() and not cfg.pretrain.get("force", False):
        ckpt = load_checkpoint(path, expect_arch=arch, max_bytes=weights_budget(model))
        load_state(model, ckpt["state_dict"], str(path))
        log.info("loaded cached baseline %s (test top-1 %.4f)", path, ckpt["meta"].get("test_top1", float("nan")))
        return model, {**ckpt["meta"], "path": str(path), "cached": True}
    if not cfg.pretrain.get("auto", True):
        raise AmcError(
            f"no pretrained checkpoint at {path}; run `python -m amc.pretrain` with the same model/data first"
        )
    log.info("training baseline %s on %s -> %s", arch["_target_"], data.name, path)
    if cfg.pretrain.get("seed") is None:
        meta = train_baseline(cfg, model, data, path)
    else:  # its own seed, independent of the run's (a sweep over search seeds shares one baseline)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(baseline_seed(cfg))
            model = instantiate(arch_spec(cfg.model))
            meta = train_baseline(cfg, model, data, path)
    meta.update(
        {"data": data.name, "seed": baseline_seed(cfg), "recipe": OmegaConf.to_container(cfg.pretrain, resolve=True)}
    )
    save_checkpoint(path, model, arch, meta)
    path.with_suffix(".partial.pt").unlink(missing_ok=True)
    model.cpu()
    return model, {**meta, "path": str(path), "cached": False}


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Train (or load from cache) the baseline and report its test accuracy.

    Args:
        cfg: the composed ``pretrain`` config.
    """
    t0 = time.perf_counter()
    check_config(cfg, "pretrain")
    data = instantiate(cfg.data)
    model, meta = load_or_pretrain(cfg, data)
    took = time.perf_counter() - t0
    if meta.get("user_weights"):  # trained elsewhere: measure the baseline here
        test = accuracy(model, data.test_loader(), resolve_device(cfg.device))
        meta["test_top1"] = test["top1"]
        state = "user weights, not trained here"
    else:
        state = "cached" if meta["cached"] else f"trained in {took:.0f} s"
    print(f"baseline {meta['path']}: test top-1 {100 * meta['test_top1']:.2f}% ({state})")
    return meta


@hydra.main(version_base="1.3", config_path="pkg://amc.conf", config_name="pretrain")
def hydra_main(cfg: DictConfig) -> None:
    """Entry point of ``python -m amc.pretrain``."""
    run_cli(pretrain, cfg)


main = hydra_entry(hydra_main)  # python -m amc.X and the amc-X console script


if __name__ == "__main__":
    main()
