"""``python -m amc.report <multirun_dir>``: aggregate a sweep of searches.

Reads every ``best_policy.json`` under the directory (one per ``amc.train`` job), groups runs by
model, mode, hardware, budget, agent and every other key the sweep varied (read from each job's
``.hydra/overrides.yaml``) except ``seed``, and writes:

- ``report.md`` (also printed): mean +- std over seeds of search accuracy, test accuracy, reward and
  the achieved cost ratios, one row per configuration;
- ``report.csv``: one row per run, with the swept keys as columns;
- ``pareto.png``: accuracy against the latency ratio and against the MACs ratio, every run a point
  and each agent's Pareto front a line (:func:`amc.plots.plot_pareto`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import ListConfig, OmegaConf
from tabulate import tabulate

from amc.errors import AmcError
from amc.plots import plot_pareto, save_figure
from amc.utils import atomic_write_bytes

log = logging.getLogger(__name__)


def load_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run's ``best_policy.json`` under ``root`` (skipping unreadable ones with a warning).

    Args:
        root: a multirun directory (or any directory holding run directories).
    """
    root = Path(root)
    if not root.is_dir():
        raise AmcError(f"{root} is not a directory; pass the multirun directory of an `amc.train -m` sweep")
    runs = []
    for path in sorted(root.rglob("best_policy.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping %s (%s)", path, type(exc).__name__)
            continue
        check_run(data, path)
        data["run_dir"] = str(path.parent)
        data["overrides"] = read_overrides(path.parent)
        runs.append(data)
    if not runs:
        raise AmcError(f"no best_policy.json under {root}; point to the directory of a finished `amc.train -m` sweep")
    return runs


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The command line's overrides of a Hydra job (``<run_dir>/.hydra/overrides.yaml``) as ``{key: value}``.

    Args:
        run_dir: the job's directory (empty result when it has no readable overrides file).
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 -- an unreadable file only loses the grouping by swept keys
        log.warning("skipping the unreadable %s (runs are grouped without its overrides)", path)
        return {}
    pairs = (str(o).split("=", 1) for o in (items if isinstance(items, ListConfig) else []))
    return {k.lstrip("+~"): v for k, v in (p for p in pairs if len(p) == 2)}


# Keys that never split a group: the seed (averaged over), keys already shown as columns, and machine settings.
NOT_GROUPED = ("seed", "agent", "model", "hardware", "env", "env.mode", "threads", "device", "trust_targets")
NOT_GROUPED_PREFIXES = ("budgets.", "hydra.", "paths.", "hydra/", "output_dir", "resume", "overwrite")


def swept_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The override keys whose values differ between ``runs`` (besides ``seed`` and the table's own columns)."""
    keys = {k for run in runs for k in run.get("overrides", {})}
    return sorted(
        k
        for k in keys
        if k not in NOT_GROUPED
        and not k.startswith(NOT_GROUPED_PREFIXES)
        and len({run.get("overrides", {}).get(k) for run in runs}) > 1
    )


def check_run(run: Any, path: Path) -> None:
    """Refuse, in one line, a ``best_policy.json`` whose fields the report reads are missing or of the wrong type.

    Args:
        run: the parsed file.
        path: where it was read (for the message).
    """

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def numbers(v: Any) -> bool:
        return isinstance(v, dict) and all(number(x) for x in v.values())

    problem = None
    if not isinstance(run, dict):
        problem = f"it holds a {type(run).__name__}, not a mapping"
    elif not numbers(run.get("ratios")):
        problem = f"ratios is {json.dumps(run.get('ratios'))[:40]}, not a mapping of metric to ratio"
    elif not number(run.get("accuracy")):
        problem = f"accuracy is {json.dumps(run.get('accuracy'))[:40]}, not a number"
    elif run.get("test_accuracy") is not None and not number(run["test_accuracy"]):
        problem = "test_accuracy is not a number"
    elif run.get("budget_targets") is not None and not numbers(run["budget_targets"]):
        problem = "budget_targets is not a mapping of metric to ratio"
    elif not run.get("budget_targets") and not (
        isinstance(run.get("budgets", {}), dict)
        and all(isinstance(b, dict) and number(b.get("target")) for b in run.get("budgets", {}).values())
    ):
        problem = "budgets is not a mapping of metric to {target: ratio}"
    if problem:
        raise AmcError(
            f"{path} is not a best_policy.json as amc.train writes it ({problem}); restore or delete that run, "
            "or point amc.report at another directory"
        )


def _budget_key(run: Mapping[str, Any]) -> str:
    targets = run.get("budget_targets") or {n: b["target"] for n, b in run.get("budgets", {}).items()}
    return ",".join(f"{k}={v:g}" for k, v in sorted(targets.items())) or "none"


def _mean_std(values: Sequence[float | None]) -> str:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "-"
    mean = float(np.mean(vals))
    if len(vals) == 1:  # one seed: no spread to show (a "± 0.0000" would claim there is none)
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {float(np.std(vals, ddof=1)):.4f}"


def aggregate(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the mean +- std table, one row per (model, mode, hardware, budget, agent, swept keys)."""
    swept = swept_keys(runs)
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        key: tuple[str, ...] = (
            str(run.get("model")),
            str(run.get("mode")),
            str(run.get("hardware")),
            _budget_key(run),
            str(run.get("agent")),
            *(str(run.get("overrides", {}).get(k, "-")) for k in swept),
        )
        groups.setdefault(key, []).append(run)
    shown = ("macs", "latency", "energy", "size")
    ratio_names = sorted({n for run in runs for n in run.get("ratios", {}) if n in shown})
    headers = [
        "model",
        "mode",
        "hardware",
        "budget",
        "agent",
        *swept,
        "seeds",
        "search acc",
        "test acc",
        "reward",
        *[f"{n} ratio" for n in ratio_names],
    ]
    rows = []
    for key in sorted(groups):
        members = groups[key]
        rows.append(
            [
                *key,
                len(members),
                _mean_std([r.get("accuracy") for r in members]),
                _mean_std([r.get("test_accuracy") for r in members]),
                _mean_std([r.get("reward") for r in members]),
                *[_mean_std([r.get("ratios", {}).get(n) for r in members]) for n in ratio_names],
            ]
        )
    return headers, rows


def report(root: str | Path, out: str | Path | None = None) -> str:
    """Aggregate the sweep under ``root``; write ``report.md``, ``report.csv`` and ``pareto.png`` into ``out``.

    Args:
        root: the multirun directory.
        out: output directory (``root`` when omitted).
    """
    runs = load_runs(root)
    out = Path(out) if out is not None else Path(root)
    headers, rows = aggregate(runs)
    table = tabulate(rows, headers=headers, tablefmt="github")
    spread = "mean ± std over seeds (the value alone where one seed ran)"
    text = f"# Sweep report: {Path(root)}\n\n{len(runs)} runs; {spread}.\n\n{table}\n"
    atomic_write_bytes(out / "report.md", text.encode())
    fields = [
        "run_dir",
        "agent",
        "seed",
        "model",
        "mode",
        "hardware",
        "budget",
        "episode",
        "accuracy",
        "test_accuracy",
        "reward",
    ]
    ratio_names = sorted({n for r in runs for n in r.get("ratios", {})})
    swept = swept_keys(runs)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(fields + swept + [f"ratio/{n}" for n in ratio_names])
    for r in runs:
        writer.writerow(
            [r.get(f) if f != "budget" else _budget_key(r) for f in fields]
            + [r.get("overrides", {}).get(k, "") for k in swept]
            + [r.get("ratios", {}).get(n, "") for n in ratio_names]
        )
    atomic_write_bytes(out / "report.csv", buf.getvalue().encode())
    save_figure(plot_pareto(runs), out / "pareto.png")
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m amc.report``."""
    prog = "amc-report" if Path(sys.argv[0]).name == "amc-report" else "python -m amc.report"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", help="directory of an `amc.train -m` sweep")
    parser.add_argument(
        "--out", default=None, help="where report.md, report.csv and pareto.png go (default: multirun_dir)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(report(args.multirun_dir, args.out))
    except AmcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
