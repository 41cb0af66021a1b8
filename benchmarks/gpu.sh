#!/usr/bin/env bash
# GPU benchmarks for sana-deploy, run on the device machine from the repository root.
#
# Sections:
#   kernels   -- Triton kernels: GPU tests + kernel benchmark vs diffusers eager math.
#   pipeline  -- end-to-end pipeline: diffusers eager vs torch + our kernels vs aoti, bf16, 20 steps.
#
# Usage:
#   bash benchmarks/gpu.sh quick [--dry-run]      # ONE command for a 15-minute lease: set-up, GPU kernel tests, kernel
#                                                 # benchmark at 4K/16K tokens, 0.6B 1024² step (diffusers eager vs
#                                                 # torch vs aoti), one 1.6B 4096² step; <= 8 min (QUICK_BUDGET_S)
#   bash benchmarks/gpu.sh wheels                 # here, with PyPI: download the wheels `quick` carries
#   bash benchmarks/gpu.sh setup                  # offline install of the carried wheels (see below)
#   bash benchmarks/gpu.sh kernels                # GPU kernel tests + kernel benchmark (no wheels needed)
#   bash benchmarks/gpu.sh pipeline 0.6b-1024     # one case per command (each fits the device's 10-minute limit)
#   bash benchmarks/gpu.sh pipeline sprint-0.6b-1024  # Sana-Sprint 0.6B, 1024², 2 steps, end to end (vs diffusers'
#                                                 # SanaSprintPipeline eager); run(carry=["benchmarks/wheels"])
#   bash benchmarks/gpu.sh pipeline all           # every case in sequence (only where there is no per-command limit)
#   bash benchmarks/gpu.sh fp8 1.6b-1024           # FP8 vs bf16 (torch and aoti), speed + quality; run(carry=
#                                                 # ["benchmarks/wheels"]); 1.6b-4k with --no-aoti --stages step
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
# Cases (benchmarks/bench_pipeline.py CASES): 0.6b-1024, 1.6b-1024, 1.6b-2k, 1.6b-4k, and sprint-0.6b-1024
# (Sana-Sprint 0.6B, 2 steps: the sCM solver, guidance as a transformer input; baseline diffusers'
# SanaSprintPipeline eager; the goal is <= 0.1 s end to end on one H100/H200; ~2-3 min with the aoti compile).
# Budget per case on one H100 (estimate): 1024² ~3-5 min (torch.compile and aoti compile time included),
# 4096² ~8-10 min; pass e.g. `--stages step,e2e --runs 5` after the case name to fit a 10-minute limit.
pipeline() {
    local case="${1:?usage: gpu.sh pipeline CASE|all [bench_pipeline.py options]}"
    shift
    mkdir -p "$RESULTS"
    if [[ "$case" == all ]]; then
        for c in 0.6b-1024 1.6b-1024 1.6b-2k 1.6b-4k sprint-0.6b-1024; do
            python benchmarks/bench_pipeline.py --case "$c" --out-dir "$RESULTS" "$@"
        done
    else
        python benchmarks/bench_pipeline.py --case "$case" --out-dir "$RESULTS" "$@"
    fi
    python benchmarks/collate.py "$RESULTS"/*.json --out "$RESULTS/collated.md" && cat "$RESULTS/collated.md"
}

# ---------------------------------------------------------------------------------------------------------------
# fp8: the transformer blocks' linear layers in FP8 (torch._scaled_mm, row-wise scales; needs compute capability
# 8.9+) against bf16, through the product pipeline: torch vs torch[quantize=fp8] vs aoti vs aoti[precision=fp8]
# (+ diffusers eager bf16), then quality against bf16 (transformer rel L2 at every solver timestep, image PSNR).
# Cases (benchmarks/bench_fp8.py CASES): 0.6b-1024, 1.6b-1024, 1.6b-4k. Estimates on one H100/H200 (unmeasured):
# 1.6b-1024 ~5-7 min (two AOTInductor compiles); 1.6b-4k ~4-6 min with --no-aoti --stages step.
# Needs the carried diffusers wheel (the baseline and the random DC-AE): run(carry=["benchmarks/wheels"]).
fp8() {
    local case="${1:?usage: gpu.sh fp8 CASE [bench_fp8.py options]}"
    shift
    mkdir -p "$RESULTS"
    python -c "import diffusers" 2>/dev/null \
        || python -m pip install --quiet --no-index --no-deps benchmarks/wheels/diffusers-*.whl
    python benchmarks/bench_fp8.py --case "$case" --out-dir "$RESULTS" "$@"
}

# ---------------------------------------------------------------------------------------------------------------
# quick: everything above that fits one 15-minute device lease (machine start included), in one command of at most
# 8 minutes (QUICK_BUDGET_S, default 480). benchmarks/gpu_quick.py runs the parts, prints a table of estimates first,
# skips a part when elapsed + its estimate would pass the budget, stops one still running at the budget, and writes
# $OUT/summary.json (parts, estimates, actual seconds, rc, skipped) + quick.log, machine.txt, kernels.json and
# one sana-deploy bench JSON per case (at most 8 files: the device's limit). Without $OUT: ./gpu-out.
#   --dry-run (or QUICK_DRY_RUN=1): same plumbing on the CPU with tiny stand-ins (sana-tiny, 512, 1 step).
#   QUICK_PARTS=aoti-0.6b: run a subset (setup,gpu-tests,kernels,step-0.6b,aoti-0.6b,step-1.6b-4k).
# The device image has torch, triton, transformers, onnx(runtime), click, ... but no diffusers, which the random DC-AE
# weights and the diffusers baseline need: run `bash benchmarks/gpu.sh wheels` here first and carry
# benchmarks/wheels (git-ignored, ~7 MB). Device call:
#   run(command="bash benchmarks/gpu.sh quick", carry=["benchmarks/wheels"], timeout_s=600)
quick() {
    OUT="${OUT:-$PWD/gpu-out}"
    export OUT
    mkdir -p "$OUT"
    python benchmarks/gpu_quick.py quick "$@"
}

# wheels: download (here, where PyPI is reachable) the pure-Python wheels `quick` installs on the device when its
# image lacks them: diffusers (required) and huggingface_hub (only installed there if diffusers fails to import with
# the image's own). Versions are those tested here; see WHEELS in benchmarks/gpu_quick.py.
wheels() {
    mkdir -p benchmarks/wheels
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d benchmarks/wheels diffusers==0.42.1 huggingface_hub==2.4.0
    ls -la benchmarks/wheels
}

cmd="${1:-}"
shift || true
case "$cmd" in
    setup) setup "$@" ;;
    kernels) kernels "$@" ;;
    pipeline) pipeline "$@" ;;
    fp8) fp8 "$@" ;;
    quick) quick "$@" ;;
    wheels) wheels "$@" ;;
    *) echo "usage: bash benchmarks/gpu.sh {quick [--dry-run]|wheels|setup|kernels [options]|pipeline CASE|all|fp8 CASE}" >&2
       exit 2 ;;
esac
