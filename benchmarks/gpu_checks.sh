#!/usr/bin/env bash
# The GPU figures of issue 15 in one run, for a session that is lent a GPU (one short script,
# because device time is short: about 5 minutes of it on an H200-class machine, untested
# there so far):
#
#     bash benchmarks/gpu_checks.sh [OUTPUT_DIR]      # default: benchmarks/
#
# 1. time to 99.0% over 10 seeds with the data on the GPU: speedrun.py with the two speed-run
#    presets moved there (`trainer=gpu data.on_device=true`); its train seconds are the
#    figure (the ratio it prints is against the article's loop on this machine's CPU);
# 2. parity.py on the GPU: train(cfg) against the plain loop, both with every image in GPU
#    memory, fp32 and bf16, 3 alternating repetitions of 2 epochs.
# Each writes its JSON record (with the GPU's name in `machine`) into OUTPUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks}
mkdir -p "$out"
python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_checks.sh: this machine has no CUDA GPU (torch.cuda.is_available() is False): nothing to measure'); print(torch.cuda.get_device_name(0))"
python benchmarks/speedrun.py --article-reps 1 \
    --preset "speedrun_bf16 trainer=gpu data.on_device=true" \
    --preset "speedrun trainer=gpu data.on_device=true" \
    --json "$out/last_speedrun_gpu.json"
python benchmarks/parity.py --device cuda --reps 3 --epochs 2 --json "$out/last_parity_gpu.json"
