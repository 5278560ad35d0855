#!/usr/bin/env bash
# Issue #16's GPU checks in one prepared run, for a machine with a CUDA GPU, python3 with torch, and no
# package registry (the project's device machine: an H200, Python 3.12, torch 2.11, no gymnasium,
# stable-baselines3, hydra-core, omegaconf or torch-pruning).
#
#   bash benchmarks/gpu_check.sh prepare   # here (registry access): wheels into .whl/, Fashion-MNIST into data/
#   bash benchmarks/gpu_check.sh run       # there, with .whl and data/fashion-mnist carried along
#   DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh run   # a rehearsal here (a minute)
#
# `prepare` downloads the pure-Python wheels the project needs beyond what such a machine holds, at the
# versions installed in this checkout's .venv (the ones the tests ran with), builds antlr4's (an sdist
# only) and the project's own, and copies the four Fashion-MNIST files into data/fashion-mnist (both
# folders are git-ignored: name them in the device tool's `carry`). About 3 MB of wheels, 30 MB of data.
#
# `run` installs the wheels into /tmp/site (no resolver: --no-deps) and runs, writing each output to
# $OUT (or benchmarks/results/episode_cost/gpu/):
#   - agent --outputs on the GPU with the agent's networks on the CPU, then on the GPU too (ResNet-20,
#     joint, 5,000-image split, 120 DDPG episodes with amc.train's outputs): issue #16's "episode
#     <= 0.1 s including the agent" (it measured 0.52 s);
#   - phases --device cuda --models resnet20: seconds per phase and the episode / forward ratio;
#   - workers --device cuda --n-envs 1,4: episodes per second of 4 workers on one GPU against one
#     (issue #16: >= 3x).
# The models are untrained (the cost does not depend on the weights), so no baseline is needed. Whole run:
# a few minutes (the device tool's limit is 10 minutes a command, 15 a session).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(gymnasium farama-notifications stable-baselines3 hydra-core omegaconf hydra-joblib-launcher torch-pruning)

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    rm -rf .whl && mkdir -p .whl
    local pins=()
    for name in "${WHEELS[@]}"; do
        pins+=("$name==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl \
        "antlr4-python3-runtime==$("$py" -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")"
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl . && rm -rf build
    mkdir -p data/fashion-mnist
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -f "data/fashion-mnist/$f.gz" ] || cp "/usr/share/datasets/fashion-mnist/$f.gz" data/fashion-mnist/ 2>/dev/null \
            || "$py" -m amc.data fashion_mnist data/fashion-mnist
    done
    ls -la .whl data/fashion-mnist
    du -sh .whl data/fashion-mnist
}

run() {
    local py=${PYTHON:-python3}
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    local out=${OUT:-benchmarks/results/episode_cost/gpu}
    mkdir -p "$out"
    {
        date -u +%Y-%m-%dT%H:%M:%SZ
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
        "$py" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name(0) if c else 'no GPU')"
        echo "cpus $(nproc)"
    } | tee "$out/device.txt"
    local bench=("$py" benchmarks/episode_cost.py) dev=${DEVICE:-cuda}
    local agent=() phases=(--models resnet20 --episodes 3) workers=(--n-envs 1,4)
    if [ -n "${QUICK:-}" ]; then  # a rehearsal of the whole flow in a minute, e.g. DEVICE=cpu QUICK=1 here
        agent=(--model fmnist_cnn --split 256 --episodes 4 --warmup 2)
        phases=(--models fmnist_cnn --splits 512 --modes joint --episodes 1)
        workers=(--n-envs 1,2 --episodes 4 --split 256)
    fi
    "${bench[@]}" agent --outputs --device "$dev" --agent-device cpu "${agent[@]}" 2>&1 | tee "$out/agent_$dev.txt"
    "${bench[@]}" agent --outputs --device "$dev" --agent-device "$dev" "${agent[@]}" 2>&1 | tee "$out/agent_${dev}_$dev.txt"
    "${bench[@]}" phases --device "$dev" "${phases[@]}" 2>&1 | tee "$out/phases_$dev.txt"
    "${bench[@]}" workers --device "$dev" --agents random,ddpg "${workers[@]}" 2>&1 | tee "$out/workers_$dev.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *)
        echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2
        exit 2
        ;;
esac
