"""The CPU reproduction runs of experiments/README.md: Fashion-MNIST, fmnist_cnn and ResNet-20 (28x28).

    python experiments/fmnist_cpu.py run STUDY [--model fmnist_cnn|resnet20] [--seeds 0,1,2] [--jobs 2]
    python experiments/fmnist_cpu.py finetune STUDY [--model ...] [--jobs 2]  # one short fine-tune per best policy
    python experiments/fmnist_cpu.py tables       # experiments/results/: tables.md, pareto plots, amc.report output

Studies (each an ``amc.train -m`` sweep on the joblib launcher, one torch thread per job):

- ``prune50``: prune-only at 50% MACs, DDPG vs random vs uniform vs greedy at the same episode budget;
- ``latency50``: 0.5x the float32 latency on ``bitfusion_edge``: joint vs prune-only vs quantize-only DDPG,
  and a uniform 4-bit policy;
- ``pareto``: joint DDPG vs random search over latency budgets 0.3 ... 0.8 (two grids: 0.3/0.5/0.7, then
  0.4/0.6/0.8; seeds per model, see ``MODELS``).

Runs go to ``experiments/runs/<model>/<study>/``; TensorBoard files and checkpoints there are git-ignored,
the episode logs, best policies, summaries and fine-tuning reports are committed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"

# Per model: the fixed overrides, the episode budget of each study and the pareto seeds (sized for a 2-core CPU).
EPISODES = {"prune50": 120, "latency50": 120, "pareto": 80}
MODELS = {
    "fmnist_cnn": {"overrides": ["model=fmnist_cnn"], "episodes": EPISODES, "pareto_seeds": "0"},
    # ResNet-20 is ~5.6x the MACs: a 1,000-image search split (1.1 s per episode here instead of 3-4 s)
    # and a 3-epoch baseline (191 s on 2 threads, 91.05 % test) keep it affordable.
    "resnet20": {
        "overrides": ["model=resnet20", "data.search_size=1000", "pretrain.epochs=3"],
        "episodes": EPISODES,
        "pareto_seeds": "0,1,2",
    },
}
STUDIES = {
    "prune50": [
        ["env=prune", "budgets.latency=null", "budgets.macs=0.5", "agent=ddpg,random,uniform,greedy"],
    ],
    "latency50": [
        ["budgets.latency=0.5", "agent=ddpg", "env=joint,prune,quantize"],
        ["budgets.latency=0.5", "agent=uniform", "env=quantize", "env.w_bits=[4,4]", "env.a_bits=[4,4]"],
    ],
    "pareto": [
        ["env=joint", "agent=ddpg,random", "budgets.latency=0.3,0.5,0.7"],
        ["env=joint", "agent=ddpg,random", "budgets.latency=0.4,0.6,0.8"],
    ],
}
FINETUNE = ["epochs=1", "export.latency_repeats=20", "export.onnx=false"]


def sweep(study: str, model: str, seeds: str | None, jobs: int, grids: list[int] | None = None) -> None:
    m = MODELS[model]
    root = RUNS / model / study
    seed_list = seeds or (m["pareto_seeds"] if study == "pareto" else "0,1,2")
    for i, grid in enumerate(STUDIES[study]):
        if grids is not None and i not in grids:
            continue
        if (root / f"sweep{i}" / "multirun.yaml").is_file():
            print(f"sweep {study}/{model}/{i}: {root / f'sweep{i}'} exists, skipped (delete it to re-run)", flush=True)
            continue
        cmd = [
            sys.executable,
            "-m",
            "amc.train",
            "-m",
            *m["overrides"],
            *grid,
            f"seed={seed_list}",
            "pretrain.seed=0",
            f"episodes={m['episodes'][study]}",
            "threads=1",
            "callbacks.progress_bar=false",
            "callbacks.checkpoint_every=1000",
            "callbacks.image_every=1000",
            f"hydra.launcher.n_jobs={jobs}",
            f"hydra.sweep.dir={root}/sweep{i}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd)
        print(f"sweep {study}/{model}/{i}: {time.perf_counter() - t0:.0f} s wall", flush=True)
        if res.returncode != 0:
            sys.exit(res.returncode)


def run_dirs(study: str, model: str) -> list[Path]:
    return sorted(p.parent for p in (RUNS / model / study).rglob("summary.json") if p.parent.name != "finetune")


def finetune(study: str, model: str, jobs: int) -> None:
    todo = [d for d in run_dirs(study, model) if not (d / "finetune" / "report.json").is_file()]

    def one(d: Path) -> tuple[Path, int, float]:
        cmd = [sys.executable, "-m", "amc.finetune", f"policy={d}", *FINETUNE, f"hydra.run.dir={d / 'finetune'}"]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        return d, rc, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each job is its own process with one torch thread
        for d, rc, seconds in pool.map(one, todo):
            if rc != 0:
                sys.exit(f"error: fine-tuning {d} failed")
            print(f"  {d}: {seconds:.0f} s", flush=True)
    print(f"finetune {study}/{model}: {len(todo)} runs, {time.perf_counter() - t0:.0f} s wall", flush=True)


def load(study: str, model: str) -> list[dict]:
    rows = []
    for d in run_dirs(study, model):
        best = json.loads((d / "best_policy.json").read_text())
        summary = json.loads((d / "summary.json").read_text())
        cfg = (d / "config.yaml").read_text()
        mode = next(ln.split(":")[1].strip() for ln in cfg.splitlines() if ln.strip().startswith("mode:"))
        bits4 = "w_bits:\n  - 4\n  - 4" in cfg
        ft = d / "finetune" / "report.json"
        rep = json.loads(ft.read_text()) if ft.is_file() else None
        rows.append(
            {
                "agent": best["agent"] + (" 4-bit" if bits4 else ""),
                "mode": mode,
                "seed": best["seed"],
                "budget_latency": best["budget_targets"].get("latency"),
                "search": 100 * summary["best_accuracy"],
                "test": 100 * summary["test_accuracy"] if summary["test_accuracy"] is not None else None,
                "ft": 100 * rep["accuracy"]["after_finetune"]["top1"] if rep else None,
                "ft_seconds": sum(h["seconds"] for h in rep["history"]) if rep else None,
                "ratios": best["ratios"],
                "seconds": summary["seconds"],
                "episodes": summary["episodes"],
                "dense_search": 100 * summary["dense_accuracy"],
                "dense_test": 100 * (summary["dense_test_accuracy"] or 0),
            }
        )
    return rows


def ms(values: list[float | None], digits: int = 2) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def group(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    """The rows grouped by their values of ``keys`` (one group per setting; its rows are the seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def table(rows: list[dict], keys: tuple[str, ...], ratio_names: tuple[str, ...], by_key: bool = False) -> str:
    """A markdown table, one line per group of ``keys``: best search accuracy first (``by_key``: by key)."""
    groups = group(rows, keys)
    head = [*keys, "seeds", "search acc (%)", "test acc (%)", "after 1-epoch fine-tune (%)"]
    head += [f"{n} ratio" for n in ratio_names] + ["episodes", "time per run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def order(kv: tuple[tuple, list[dict]]) -> tuple:
        return kv[0] if by_key else (-statistics.mean(r["search"] for r in kv[1]),)

    for key, rs in sorted(groups.items(), key=order):
        cells = [*map(str, key), str(len(rs)), ms([r["search"] for r in rs]), ms([r["test"] for r in rs])]
        cells.append(ms([r["ft"] for r in rs]))
        cells += [ms([r["ratios"].get(n) for r in rs], 3) for n in ratio_names]
        cells += [str(rs[0]["episodes"]), ms([r["seconds"] for r in rs], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: Path, title: str, references: list[dict] | None = None) -> None:
    """Test accuracy against achieved latency, per agent (mean ± std over seeds at each budget).

    ``references``: other runs drawn as single points (the latency50 uniform 4-bit policy).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for agent, marker in (("ddpg", "o"), ("random", "s")):
        by_budget = group([r for r in rows if r["agent"] == agent], ("budget_latency",))
        if not by_budget:
            continue
        pts = []  # per budget: mean achieved latency, mean and std (over seeds) of test accuracy
        for _, rs in sorted(by_budget.items()):
            acc = [r["test"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            pts.append((statistics.mean(r["ratios"]["latency"] for r in rs), statistics.mean(acc), sd))
        seeds = max(len(rs) for rs in by_budget.values())
        label = agent + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else "")
        ax.errorbar(
            [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=marker, capsize=3, label=label
        )
    for (agent,), rs in sorted(group(references or [], ("agent",)).items()):
        ax.plot(
            [r["ratios"]["latency"] for r in rs],
            [r["test"] for r in rs],
            "*",
            ms=10,
            ls="none",
            label=f"{agent} (latency50 runs)",
        )
    for r in rows[:1]:
        ax.axhline(r["dense_test"], color="gray", ls="--", lw=1, label="float32 baseline")
    ax.set_xlabel("achieved latency / float32 latency (bitfusion_edge)")
    ax.set_ylabel("test top-1 (%) of the best policy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tables() -> None:
    from amc.report import report

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = []
    for model in MODELS:
        if run_dirs("prune50", model):
            out += [f"## {model}: prune-only, 50% MACs\n", table(load("prune50", model), ("agent",), ("macs",)), ""]
        if run_dirs("latency50", model):
            rows = load("latency50", model)
            out += [f"## {model}: 0.5x latency on bitfusion_edge\n"]
            out += [table(rows, ("agent", "mode"), ("latency", "energy", "macs", "size")), ""]
        if run_dirs("pareto", model):
            rows = load("pareto", model)
            seeds = ",".join(sorted({str(r["seed"]) for r in rows}))
            out += [f"## {model}: latency budget sweep (joint, seeds {seeds})\n"]
            out += [table(rows, ("budget_latency", "agent"), ("latency", "energy"), by_key=True), ""]
            refs = [r for r in load("latency50", model) if r["agent"] == "uniform 4-bit"]
            pareto_plot(rows, RESULTS / f"pareto_{model}.png", f"{model}, Fashion-MNIST, joint search", refs)
            # amc.report's generic view of the same runs: every run a point, each agent's front a line
            report(RUNS / model / "pareto", RESULTS / f"amc_report_pareto_{model}")
    (RESULTS / "tables.md").write_text("\n".join(out))
    print("\n".join(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "finetune", "tables"])
    p.add_argument("study", nargs="?", choices=sorted(STUDIES))
    p.add_argument("--model", default="fmnist_cnn", choices=sorted(MODELS))
    p.add_argument("--seeds", default=None, help="default: 0,1,2 (pareto: the model's pareto_seeds)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--grid", type=int, action="append", help="run only this grid of the study (repeatable)")
    a = p.parse_args()
    if a.command != "tables" and a.study is None:
        p.error("run and finetune need a study")
    if a.command == "run":
        sweep(a.study, a.model, a.seeds, a.jobs, a.grid)
    elif a.command == "finetune":
        finetune(a.study, a.model, a.jobs)
    else:
        tables()


if __name__ == "__main__":
    main()
