#!/usr/bin/env bash
# GPU benchmarks for sana-deploy, run on the device machine from the repository root.
#
# Sections:
#   kernels   -- Triton kernels: GPU tests + kernel benchmark vs diffusers eager math.
#   pipeline  -- end-to-end pipeline: diffusers eager vs torch + our kernels vs aoti, bf16, 20 steps.
#
# Usage:
#   bash benchmarks/gpu.sh setup                  # offline install of the carried wheels (see below)
#   bash benchmarks/gpu.sh kernels                # GPU kernel tests + kernel benchmark (no wheels needed)
#   bash benchmarks/gpu.sh pipeline 0.6b-1024     # one case per command (each fits the device's 10-minute limit)
#   bash benchmarks/gpu.sh pipeline all           # every case in sequence (only where there is no per-command limit)
# Results go to $OUT (the device's return folder) when set, else benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="${OUT:-benchmarks/results}"

# ---------------------------------------------------------------------------------------------------------------
# setup: the device has torch + triton but no diffusers/transformers and no network. Download the wheels here
# (Python 3.12, manylinux x86_64) and carry them (run(carry=["benchmarks/wheels"]); ~40 MB, under the 64 MiB limit):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 -d benchmarks/wheels diffusers transformers matplotlib filelock click
setup() {
    python -m pip install --no-index --find-links benchmarks/wheels diffusers transformers matplotlib filelock click \
        || echo "setup: some wheels missing; the benchmark still runs without matplotlib (no PNG)" >&2
    python -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
}

# ---------------------------------------------------------------------------------------------------------------
# kernels: GPU tests of the Triton kernels (pytest -m gpu tests/plugins), then the kernel benchmark
# (Triton vs diffusers' eager math, every op x {0.6b,1.6b} x {1024,4096,16384} tokens x {bf16,fp16}). Needs only
# torch + triton (no diffusers, no network). ~3-6 min on one H100; extra args go to bench_kernels.py
# (e.g. `bash benchmarks/gpu.sh kernels --tokens 16384 --reps 20`).
kernels() {
    mkdir -p "$RESULTS"
    local rc=0
    python -m pytest -m gpu tests/plugins -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$RESULTS/kernels-gpu-tests.txt" \
        || rc=$?
    python benchmarks/bench_kernels.py --out-dir "$RESULTS" "$@"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------------------------
# pipeline: diffusers eager (always added as the baseline) vs torch + our kernels vs aoti
# (+ torch.compile at 1024²), bf16, 20 steps, seeded random weights at the real dimensions.
# Cases (benchmarks/bench_pipeline.py CASES): 0.6b-1024, 1.6b-1024, 1.6b-2k, 1.6b-4k.
# Budget per case on one H100 (estimate): 1024² ~3-5 min (torch.compile and aoti compile time included),
# 4096² ~8-10 min; pass e.g. `--stages step,e2e --runs 5` after the case name to fit a 10-minute limit.
pipeline() {
    local case="${1:?usage: gpu.sh pipeline CASE|all [bench_pipeline.py options]}"
    shift
    mkdir -p "$RESULTS"
    if [[ "$case" == all ]]; then
        for c in 0.6b-1024 1.6b-1024 1.6b-2k 1.6b-4k; do
            python benchmarks/bench_pipeline.py --case "$c" --out-dir "$RESULTS" "$@"
        done
    else
        python benchmarks/bench_pipeline.py --case "$case" --out-dir "$RESULTS" "$@"
    fi
    python benchmarks/collate.py "$RESULTS"/*.json --out "$RESULTS/collated.md" && cat "$RESULTS/collated.md"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    setup) setup "$@" ;;
    kernels) kernels "$@" ;;
    pipeline) pipeline "$@" ;;
    *) echo "usage: bash benchmarks/gpu.sh {setup|kernels [bench_kernels.py options]|pipeline CASE|all}" >&2; exit 2 ;;
esac
