#!/usr/bin/env bash
# The GPU figures of the label job and of student training (benchmarks/gpu_bench.py says what and
# how), as one JSON line. Under 8 minutes on one GPU node; `--smoke` runs every step at tiny sizes
# on CPU, as CI does.
#
#   bash benchmarks/gpu.sh [--smoke] [--size HxW] [--peak-tflops T]
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 python benchmarks/gpu_bench.py "$@"
