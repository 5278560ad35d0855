"""Search quality: every agent against every hand-made allocator at the same budget, several seeds, one command.

    python benchmarks/search_quality.py run [--settings S1,S2] [--agents ddpg,uniform,...] [--seeds 0,1,2]
                                            [--jobs 2] [--out DIR] [--set KEY=VALUE ...]
    python benchmarks/search_quality.py report [--out DIR]

Each run is ``python -m amc.train`` (the real command, one torch thread, one shared baseline:
``pretrain.seed=0``) into ``DIR/<setting>/<agent>/seed<k>``; a run whose ``summary.json`` exists is
skipped, so an interrupted benchmark continues. Learning agents run with ``agent.best_of=learner``:
their best policy (and its test accuracy) comes from their own episodes only, never from a replayed
demonstration. ``report`` prints, per setting: mean ± std over seeds of the best policy's search and
test accuracy (after the setting's fine-tune, where it has one), each agent's margin over the best
baseline (uniform, random, greedy, ilp: the highest mean), where the best was found (the phase of
the best episode) and the mean episodes and wall seconds per run; and writes ``report.md`` and
``report.json`` beside the runs.

Settings (Fashion-MNIST, the full 5,000-image search split unless ``--set data.search_size=N``):

- S1 fmnist_cnn, quantize, latency <= 0.5 on bitfusion_edge, 120 episodes;
- S2 fmnist_cnn, joint, latency <= 0.3, 200 episodes;
- S3 ResNet-20 (28x28), joint, latency <= 0.5, 200 episodes (a 3-epoch baseline; on a CPU pass a
  smaller split with ``--set``);
- S4 fmnist_cnn, prune, MACs <= 0.3, 120 episodes, scored after the same 1-epoch fine-tune;
- D the default run (``make run``): fmnist_cnn, joint, latency <= 0.5, 400 episodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from amc.agents.sb3 import LEARNER_PHASES  # the learner's own phases (probe, warm-up, explore, exploit)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search_quality"
COMMON = ["hardware=bitfusion_edge", "budgets.latency=null", "pretrain.seed=0", "threads=1"]
SETTINGS: dict[str, dict] = {
    "S1": {"overrides": ["model=fmnist_cnn", "env=quantize", "budgets.latency=0.5"], "episodes": 120},
    "S2": {"overrides": ["model=fmnist_cnn", "env=joint", "budgets.latency=0.3"], "episodes": 200},
    "S3": {"overrides": ["model=resnet20", "pretrain.epochs=3", "env=joint", "budgets.latency=0.5"], "episodes": 200},
    "S4": {"overrides": ["model=fmnist_cnn", "env=prune", "budgets.macs=0.3"], "episodes": 120, "finetune": True},
    # The default `make run` / `python -m amc.train`: joint, latency <= 0.5 on bitfusion_edge, 400 episodes.
    "D": {"overrides": ["model=fmnist_cnn", "env=joint", "budgets.latency=0.5"], "episodes": 400},
}
BASELINES = ("uniform", "random", "greedy", "ilp")
LEARNERS = ("ddpg", "ddpg_cold", "td3", "sac", "ppo")
AGENTS = ("ddpg_cold", "ddpg", "td3", "uniform", "random", "greedy", "ilp")
FINETUNE = ["epochs=1", "export.latency_repeats=5", "export.onnx=false", "threads=1"]


def run_one(out: Path, setting: str, agent: str, seed: int, extra: list[str]) -> tuple[str, float, int]:
    """One search (and its fine-tune where the setting has one); returns (run dir, seconds, exit status)."""
    s = SETTINGS[setting]
    run_dir = out / setting / agent / f"seed{seed}"
    t0 = time.perf_counter()
    if not (run_dir / "summary.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "amc.train",
            *COMMON,
            *s["overrides"],
            f"agent={agent}",
            f"episodes={s['episodes']}",
            f"seed={seed}",
            "callbacks.progress_bar=false",
            "callbacks.checkpoint_every=1000",
            "callbacks.image_every=1000",
            f"hydra.run.dir={run_dir}",
            "overwrite=true",
            *(["agent.best_of=learner"] if agent in LEARNERS else []),
            *extra,
        ]
        print("+", " ".join(cmd), flush=True)
        log = run_dir.parent / f"seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        if rc != 0:
            return str(run_dir), time.perf_counter() - t0, rc
    if s.get("finetune") and not (run_dir / "finetune" / "report.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "amc.finetune",
            f"policy={run_dir}",
            *FINETUNE,
            f"hydra.run.dir={run_dir / 'finetune'}",
        ]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        if rc != 0:
            return str(run_dir), time.perf_counter() - t0, rc
    return str(run_dir), time.perf_counter() - t0, 0


def load_run(run_dir: Path) -> dict | None:
    """The figures of one finished run (``None`` when it has not finished)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    with (run_dir / "episodes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    best = next((r for r in rows if int(r["episode"]) == int(summary["best_episode"])), None)
    own = [r for r in rows if r["phase"] in LEARNER_PHASES and int(r["eligible"])]
    last = own[-20:]
    ft = run_dir / "finetune" / "report.json"
    report = json.loads(ft.read_text()) if ft.is_file() else None
    return {
        "search": 100 * float(summary["best_accuracy"]),
        "test": None if summary["test_accuracy"] is None else 100 * float(summary["test_accuracy"]),
        "finetuned": 100 * report["accuracy"]["after_finetune"]["top1"] if report else None,
        "found": best["phase"] if best else "?",
        "episodes": int(summary["episodes"]),
        "seconds": float(summary["seconds"]),
        "last20": statistics.mean(100 * float(r["accuracy"]) for r in last) if last else None,
        "dense_search": 100 * float(summary["dense_accuracy"]),
    }


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(out: Path) -> str:
    """The tables of every setting found under ``out`` (also written to report.md / report.json)."""
    lines: list[str] = []
    data: dict[str, dict] = {}
    for setting in sorted(p.name for p in out.iterdir() if p.is_dir() and p.name in SETTINGS):
        runs: dict[str, list[dict]] = {}
        for agent_dir in sorted((out / setting).iterdir()):
            if agent_dir.is_dir():
                found = [load_run(d) for d in sorted(agent_dir.glob("seed*")) if d.is_dir()]
                found = [r for r in found if r is not None]
                if found:
                    runs[agent_dir.name] = found
        if not runs:
            continue
        score = "finetuned" if SETTINGS[setting].get("finetune") else "search"

        def mean(agent: str, key: str = score, runs: dict[str, list[dict]] = runs) -> float:
            return statistics.mean(r[key] for r in runs[agent] if r[key] is not None)

        bases = [a for a in BASELINES if a in runs]
        bar = max(bases, key=mean) if bases else None
        dense = runs[next(iter(runs))][0]["dense_search"]
        spec = SETTINGS[setting]
        lines += [
            f"### {setting}: {' '.join(spec['overrides'])}, {spec['episodes']} episodes"
            + (", scored after a 1-epoch fine-tune" if spec.get("finetune") else ""),
            "",
            f"Dense search accuracy {dense:.2f} %. Margin: the agent's mean {score} accuracy minus the best "
            f"baseline's ({bar}: {mean(bar):.2f} %)."
            if bar
            else "",
            "",
            "| agent | seeds | search acc (%) | test acc (%) | fine-tuned (%) | margin | best found in | "
            "last-20 own episodes (%) | episodes | s per run |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        table = {}
        for agent in sorted(runs, key=lambda a: -mean(a)):
            rs = runs[agent]
            margin = mean(agent) - mean(bar) if bar else None
            found = ", ".join(sorted({r["found"] for r in rs}))
            cells = [
                agent,
                str(len(rs)),
                ms([r["search"] for r in rs]),
                ms([r["test"] for r in rs if r["test"] is not None]),
                ms([r["finetuned"] for r in rs if r["finetuned"] is not None]),
                "-" if margin is None or agent == bar else f"{margin:+.2f}",
                found,
                ms([r["last20"] for r in rs if r["last20"] is not None]),
                f"{statistics.mean(r['episodes'] for r in rs):.0f}",
                f"{statistics.mean(r['seconds'] for r in rs):.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            table[agent] = {"runs": rs, "margin": margin}
        lines.append("")
        data[setting] = {"bar": bar, "score": score, "agents": table}
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps(data, indent=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--settings", default="S1,S2,S4")
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each one process, one torch thread)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--set", action="append", default=[], help="extra amc.train override for every run")
    args = parser.parse_args()
    if args.command == "run":
        settings = [s for s in args.settings.split(",") if s]
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            sys.exit(f"error: unknown setting(s) {', '.join(unknown)}; choose among {', '.join(SETTINGS)}")
        jobs = [(s, a, int(k)) for s in settings for k in args.seeds.split(",") for a in args.agents.split(",") if a]
        t0 = time.perf_counter()
        failed = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for run_dir, seconds, rc in pool.map(lambda j: run_one(args.out, *j, args.set), jobs):
                print(f"  {run_dir}: {seconds:.0f} s" + (f" FAILED (exit {rc})" if rc else ""), flush=True)
                if rc:
                    failed.append(run_dir)
        print(f"{len(jobs)} runs, {time.perf_counter() - t0:.0f} s wall, {args.jobs} at a time", flush=True)
        if failed:
            sys.exit(f"error: {len(failed)} run(s) failed; see the .log beside each")
    print(report(args.out))


if __name__ == "__main__":
    main()
