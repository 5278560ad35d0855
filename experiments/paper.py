"""Run one paper configuration end to end: search (``amc.train``), then fine-tune and export (``amc.finetune``).

    python experiments/paper.py NAME [hydra overrides for the search ...] [-- finetune overrides ...]

``NAME`` is a file of ``conf/experiment/`` (``amc_resnet56_cifar10``, ``haq_mobilenet_v2_bismo_cloud``...).
The search runs with ``experiment=NAME`` and the overrides; the fine-tune gets the experiment's ``finetune:``
recipe (``epochs``, ``lr``, ...) plus the overrides after ``--``. At the end the paper's number and ours
are printed side by side and written to ``<search run dir>/paper_result.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

RECIPE_KEYS = ("epochs", "lr", "momentum", "weight_decay", "nesterov", "label_smoothing", "kd", "from_scratch")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        sys.exit(res.returncode)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        argv, ft_overrides = argv[:i], argv[i + 1 :]
    else:
        ft_overrides = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a config of conf/experiment/")
    parser.add_argument("--run-dir", default=None, help="search run directory (default: outputs/paper/<name>)")
    args, search_overrides = parser.parse_known_args(argv)
    conf_dir = Path(__file__).resolve().parents[1] / "conf" / "experiment"
    if not (conf_dir / f"{args.name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in conf_dir.glob("*.yaml")))
        sys.exit(f"error: unknown experiment {args.name!r}; choose one of {known}")
    overrides = [f"experiment={args.name}", *search_overrides]
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_dir = Path(args.run_dir or f"{cfg.paths.log_dir}/paper/{args.name}")
    ft_dir = run_dir / "finetune"
    recipe = {k: v for k, v in (cfg.get("finetune") or {}).items() if k in RECIPE_KEYS}
    t0 = time.perf_counter()
    run([sys.executable, "-m", "amc.train", *overrides, f"hydra.run.dir={run_dir}"])
    t_search = time.perf_counter() - t0
    run(
        [
            sys.executable,
            "-m",
            "amc.finetune",
            f"policy={run_dir}",
            *(f"{k}={v}" for k, v in recipe.items()),
            f"threads={cfg.threads}",
            f"device={cfg.device}",
            *ft_overrides,
            f"hydra.run.dir={ft_dir}",
        ]
    )
    report = json.loads((ft_dir / "report.json").read_text())
    paper = OmegaConf.to_container(cfg.get("paper") or {}, resolve=True)
    result = {
        "experiment": args.name,
        "paper": paper,
        "ours": {
            "baseline_top1": 100 * report["accuracy"]["dense"]["top1"],
            "compressed_top1_before_finetune": 100 * report["accuracy"]["before_finetune"]["top1"],
            "compressed_top1": 100 * report["accuracy"]["after_finetune"]["top1"],
            "macs_ratio": report["compressed"]["macs"] / report["dense"]["macs"],
            "size_ratio": report["compressed"]["size_bits"] / report["dense"]["size_bits"],
        },
        "search_seconds": t_search,
        "total_seconds": time.perf_counter() - t0,
        "overrides": {"search": search_overrides, "finetune": ft_overrides},
    }
    (run_dir / "paper_result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
