#!/usr/bin/env bash
# The GPU figures in one run (about 5 minutes on an H100/H200-class GPU):
#
#     bash benchmarks/gpu_checks.sh [RESULTS_DIR]      # default: benchmarks/results
#
# 1. time to 99.0% over 10 seeds with the data on the GPU: benchmarks.speedrun with the two
#    speed-run presets moved there (`trainer=gpu data.on_device=true`); its train seconds are
#    the figure (the ratio it prints is against the article's loop on this machine's CPU);
# 2. benchmarks.parity on the GPU: train(cfg) against the plain loop, both with every image in
#    GPU memory, fp32 and bf16, 3 alternating repetitions of 2 epochs.
# Each writes its record (with the GPU's name in `machine`, so a class of its own) into RESULTS_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_checks.sh: this machine has no CUDA GPU (torch.cuda.is_available() is False): nothing to measure'); print(torch.cuda.get_device_name(0))"
python -m benchmarks.speedrun --article-reps 1 --record speedrun-gpu --results-dir "$out" \
    --preset "speedrun_bf16 trainer=gpu data.on_device=true" \
    --preset "speedrun trainer=gpu data.on_device=true"
python -m benchmarks.parity --device cuda --reps 3 --epochs 2 --results-dir "$out"
