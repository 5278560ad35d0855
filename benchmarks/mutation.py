"""Mutation check: apply one-line bugs to a copy of the committed sources and see which test catches each.

Each mutation is a text substitution in one file of a temporary copy of ``git HEAD`` (the working tree is
never touched); the tests named for it run against that copy (``PYTHONPATH`` puts the copy's ``amc``
package, laid out as installed, before the editable install). A mutation is *caught* when a test fails.
The first failing test is printed, then the score (caught / applied).

    python benchmarks/mutation.py            # all mutations (about 5 minutes on 2 cores)
    python benchmarks/mutation.py -k wall    # those whose name contains "wall"
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One one-line bug: replace ``old`` by ``new`` in ``path`` and run ``tests``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


STAGES = "tests/test_stages.py"
QUANT = "tests/test_quantizers.py"
REWARDS = "tests/test_rewards.py"
OPTIONS = "tests/test_options.py"

MUTATIONS = [
    # The bugs of issue #19.
    Mutation(
        "bn recalibration skipped",
        "amc/compress.py",
        "        if self.bn_recalibration:\n            recalibrate_bn(",
        "        if False:\n            recalibrate_bn(",
        (f"{STAGES}::test_bn_recalibration_sets_running_stats_to_the_calibration_batch_statistics",),
    ),
    Mutation(
        "activation quantizer one extra bit",
        "amc/quantize.py",
        "self.bits = int(bits)",
        "self.bits = int(bits) + 1",
        (QUANT,),
    ),
    Mutation(
        "HAQ accuracy-delta reward sign",
        "amc/rewards.py",
        'metrics["accuracy"] - metrics["dense_accuracy"]',
        'metrics["dense_accuracy"] - metrics["accuracy"]',
        (REWARDS,),
    ),
    Mutation(
        "blended reward exponent sign",
        "amc/rewards.py",
        "value *= (max(ratio, 1e-9) / target) ** w",
        "value *= (max(ratio, 1e-9) / target) ** -w",
        (REWARDS,),
    ),
    Mutation(
        "error*log(MACs) reward sign",
        "amc/rewards.py",
        'return -(1.0 - metrics["accuracy"])',
        'return (1.0 - metrics["accuracy"])',
        (REWARDS,),
    ),
    Mutation(
        "from_scratch ignored",
        "amc/finetune.py",
        "        if recipe.from_scratch:\n            reinitialise(model)",
        "        if False:\n            reinitialise(model)",
        ("tests/test_finetune.py::test_from_scratch_reinitialises_the_weights",),
    ),
    Mutation(
        "reward back-fill disabled",
        "agents/buffers.py",
        "            if self.backfill:",
        "            if False:",
        (f"{OPTIONS}::test_ddpg_buffer_holds_the_episode_reward_at_every_step_with_backfill",),
    ),
    # Compressor stages.
    Mutation(
        "selection keeps the first channels",
        "amc/compress.py",
        "return keep_indices(self.scores, policy.kept)",
        "return [torch.arange(int(k)) for k in policy.kept]",
        (f"{STAGES}::test_selection_keeps_the_highest_l1_filters_and_prunes_the_rest",),
    ),
    Mutation(
        "l1 selection uses the L2 norm",
        "amc/selection.py",
        'if method == "l1":\n        return magnitude_scores(model, graph, p=1)',
        'if method == "l1":\n        return magnitude_scores(model, graph, p=2)',
        (f"{STAGES}::test_selection_keeps_the_highest_l1_filters_and_prunes_the_rest",),
    ),
    Mutation(
        "reconstruction skipped",
        "amc/compress.py",
        "        if self.reconstruction:\n            self._reconstruct(",
        "        if False:\n            self._reconstruct(",
        (f"{STAGES}::test_reconstruction_solves_the_least_squares_problem_of_the_next_layer",),
    ),
    Mutation(
        "quantization skipped",
        "amc/compress.py",
        "if any(b < FP32 for b in list(policy.w_bits) + list(policy.a_bits)):",
        "if False:",
        (f"{STAGES}::test_quantization_puts_weights_and_unit_inputs_on_their_grids",),
    ),
    Mutation(
        "per-episode fine-tune skipped",
        "amc/compress.py",
        "        if self.finetune_batches:\n            self._short_finetune(model, policy)",
        "        if False:\n            self._short_finetune(model, policy)",
        (f"{STAGES}::test_per_episode_finetune_is_one_pass_of_sgd_then_back_onto_the_grid",),
    ),
    Mutation(
        "per-episode fine-tune done twice",
        "amc/compress.py",
        "            self._short_finetune(model, policy)",
        "            self._short_finetune(model, policy)\n            self._short_finetune(model, policy)",
        (f"{STAGES}::test_per_episode_finetune_is_one_pass_of_sgd_then_back_onto_the_grid",),
    ),
    Mutation(
        "bn recalibration keeps an exponential average",
        "amc/compress.py",
        "m.momentum = None",
        "m.momentum = 0.1",
        (f"{STAGES}::test_bn_recalibration_sets_running_stats_to_the_calibration_batch_statistics",),
    ),
    # Quantizer ranges.
    Mutation(
        "symmetric weights one extra bit",
        "amc/quantize.py",
        "qmax = 2 ** (bits - 1) - 1",
        "qmax = 2**bits - 1",
        (QUANT,),
    ),
    Mutation(
        "asymmetric weights one level short",
        "amc/quantize.py",
        "qmin, qmax = 0, 2**bits - 1",
        "qmin, qmax = 0, 2**bits - 2",
        (QUANT,),
    ),
    Mutation(
        "signed activations full (not narrow) range",
        "amc/quantize.py",
        "qmin, qmax = -(2 ** (self.bits - 1) - 1), 2 ** (self.bits - 1) - 1",
        "qmin, qmax = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1",
        (QUANT,),
    ),
    Mutation(
        "activation range not widened by later batches",
        "amc/quantize.py",
        "self.max_abs = max(self.max_abs, -lo, hi)",
        "self.max_abs = max(-lo, hi)",
        (QUANT,),
    ),
    # Costs, wall, features, energy.
    Mutation(
        "depthwise MACs counted as a dense conv",
        "amc/cost.py",
        "groups = np.where(self._depthwise, c_out, self._groups)",
        "groups = self._groups",
        (
            "tests/test_cost.py::test_closed_form_matches_pruned_model",
            f"{REWARDS}::test_depthwise_and_pointwise_macs_by_hand",
        ),
    ),
    Mutation(
        "budget wall 50% too loose",
        "envs/budget.py",
        "m[n] <= self.limits[n] * (1 + 1e-12)",
        "m[n] <= self.limits[n] * 1.5",
        ("tests/test_env.py::test_episode_info_reports_targets_achieved_and_policy",),
    ),
    Mutation(
        "repair keeps what was asked above the reference",
        "envs/compression.py",
        "if self.quantize and arr[t] > target:",
        "if False:",
        ("tests/test_env.py::test_repair_takes_back_what_was_asked_above_the_reference_from_the_last_unit",),
    ),
    Mutation(
        "feature macs_after includes the unit itself",
        "envs/features.py",
        "(after[u.index] - u.macs) / dense",
        "after[u.index] / dense",
        (f"{REWARDS}::test_static_features_by_hand",),
    ),
    Mutation(
        "feature macs_before includes the current unit",
        "envs/compression.py",
        "macs_before=float(unit_macs[:t].sum())",
        "macs_before=float(unit_macs[: t + 1].sum())",
        (f"{REWARDS}::test_env_observation_tracks_decisions_by_hand",),
    ),
    Mutation(
        "MAC energy adds operand widths",
        "amc/hardware/energy.py",
        "self.mult8_pj * (w_bits * a_bits) / 64.0",
        "self.mult8_pj * (w_bits + a_bits) / 16.0",
        (f"{REWARDS}::test_energy_mac_by_precision",),
    ),
    Mutation(
        "DRAM energy dropped",
        "amc/hardware/accelerators.py",
        "dram_e = dram * en.dram_pj_per_byte * 1e-12",
        "dram_e = 0.0 * dram",
        (f"{REWARDS}::test_weight_stationary_layer_cost_components_by_hand",),
    ),
    Mutation(
        "static energy dropped",
        "amc/hardware/accelerators.py",
        "static_e = self.static_power_w * latency",
        "static_e = 0.0",
        (f"{REWARDS}::test_weight_stationary_layer_cost_components_by_hand",),
    ),
    Mutation(
        "partial sums not re-read per K fold",
        "amc/hardware/accelerators.py",
        "(k_folds - 1) * 2.0 * en.psum_bytes",
        "0.0 * en.psum_bytes",
        (f"{REWARDS}::test_weight_stationary_layer_cost_components_by_hand",),
    ),
    Mutation(
        "accuracy reward scale ignored",
        "amc/rewards.py",
        'return self.scale * metrics["accuracy"]',
        'return metrics["accuracy"]',
        (REWARDS,),
    ),
    # Training options.
    Mutation(
        "reward baseline ignored",
        "agents/buffers.py",
        "        if not self.use_baseline:\n            return data",
        "        if True:\n            return data",
        (f"{OPTIONS}::test_ddpg_reward_baseline_is_a_moving_average_of_the_stored_rewards",),
    ),
    Mutation(
        "exploration noise not passed to SB3",
        "agents/ddpg.py",
        "action_noise=self.noise,",
        "action_noise=None,",
        (f"{OPTIONS}::test_noise_is_drawn_at_every_learning_step_and_decays_to_its_floor",),
    ),
    Mutation(
        "sigma_floor ignored",
        "agents/noise.py",
        "self.sigma = max(self.floor, self.sigma * self.decay)",
        "self.sigma = self.sigma * self.decay",
        (f"{OPTIONS}::test_noise_is_drawn_at_every_learning_step_and_decays_to_its_floor",),
    ),
    Mutation(
        "kd ignored",
        "amc/finetune.py",
        "teacher=dense if recipe.kd else None,",
        "teacher=None,",
        ("tests/test_finetune.py::test_finetune_with_kd_improves_and_exports_onnx",),
    ),
    # Checkpoints.
    Mutation(
        "a checkpoint directory left by a kill blocks the next one",
        "agents/callbacks.py",
        "        if final.exists():\n            shutil.rmtree(final)",
        "        if False:\n            shutil.rmtree(final)",
        ("tests/test_train.py::test_kills_inside_the_checkpoint_writes_resume_to_the_same_search",),
    ),
    # Episode cost (issue #16).
    Mutation(
        "search calibration on the first images of the split",
        "amc/compress.py",
        "return torch.randperm(n, generator=gen)[: min(n, size)].sort().values",
        "return torch.arange(min(n, size))",
        (f"{STAGES}::test_calibration_on_the_search_split_is_one_random_batch_evaluated_in_the_same_pass",),
    ),
    Mutation(
        "heap trimmed after every episode",
        "amc/utils.py",
        "        if rss <= self.reference * (1 + self.slack):\n            return False",
        "        if False:\n            return False",
        ("tests/test_episode_cost.py::test_the_heap_is_trimmed_only_once_resident_memory_grew_past_the_slack",),
    ),
    Mutation(
        "channels_last ignored",
        "amc/compress.py",
        "        if nhwc:\n            model = model.to(memory_format=torch.channels_last)",
        "        if False:\n            model = model.to(memory_format=torch.channels_last)",
        ("tests/test_episode_cost.py::test_channels_last_models_score_what_contiguous_ones_do",),
    ),
]


def _copy_head(root: Path) -> tuple[Path, Path]:
    """``git HEAD`` under ``root/src`` and its package as installed (``amc.envs`` etc.) under ``root/pkg``."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    src = root / "src"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    pkg = root / "pkg"
    pkg.mkdir()
    os.symlink(src / "amc", pkg / "amc")
    for sub in ("envs", "agents", "conf"):
        if not (src / "amc" / sub).exists():
            os.symlink(src / sub, src / "amc" / sub)
    return src, pkg


def _run(src: Path, pkg: Path, tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """(passed, first failing test or error line, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(pkg), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = res.stdout + res.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    return (
        res.returncode == 0,
        (failed[0] if failed else out.strip().splitlines()[-1] if out.strip() else ""),
        (time.perf_counter() - t0),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only mutations whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.k in m.name]
    with tempfile.TemporaryDirectory(prefix="amc-mutation-") as tmp:
        src, pkg = _copy_head(Path(tmp))
        import_check = subprocess.run(
            [sys.executable, "-c", "import amc, amc.envs; print(amc.__file__)"],
            env={**os.environ, "PYTHONPATH": str(pkg)},
            capture_output=True,
            text=True,
            cwd=src,
        )
        if not import_check.stdout.startswith(tmp):  # the copy (through pkg/ or, from its root, src/)
            print(f"the copy is not the amc that gets imported: {import_check.stdout}{import_check.stderr}")
            return 2
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        ok, why, secs = _run(src, pkg, tests)
        print(f"baseline: {len(tests)} test selections {'pass' if ok else 'FAIL: ' + why} ({secs:.0f} s)")
        if not ok:
            return 2
        caught = applied = 0
        for m in chosen:
            path = src / m.path
            original = path.read_text()
            if original.count(m.old) != 1:
                print(f"SKIP    {m.name}: the text to mutate occurs {original.count(m.old)} times in {m.path}")
                continue
            try:
                path.write_text(original.replace(m.old, m.new))
                passed, why, secs = _run(src, pkg, m.tests)
            finally:
                path.write_text(original)
            applied += 1
            caught += not passed
            verdict = f"caught by {why}" if not passed else "SURVIVED"
            print(f"{'caught ' if not passed else 'MISSED '} {m.name} ({m.path}; {secs:.0f} s): {verdict}")
        print(f"score: {caught}/{applied} mutations caught")
        return 0 if caught == applied else 1


if __name__ == "__main__":
    sys.exit(main())
