#!/usr/bin/env bash
# The device check, one command on a CUDA machine: install, GPU tests, throughput of every method and of
# lightly's SimCLR (bf16/compile on and off, MFU, peak memory), one essl run of 200 epochs timed end to end.
#   bash benchmarks/gpu_check.sh                # about 8 minutes of device time
#   bash benchmarks/gpu_check.sh --minutes 14   # more time: every stage
#   bash benchmarks/gpu_check.sh --dry-run      # anywhere: every stage at toy size on the CPU
# Report: benchmarks/results/gpu-check/report.md and report.json (arguments: see benchmarks/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu_check.py "$@"
