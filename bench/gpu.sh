#!/usr/bin/env bash
# Every CUDA check of the project in one command, for a GPU machine (CI has none): the CUDA tests, the CRF and
# inference benchmarks against their targets, an AMP training step, a 1-GPU DDP step and the out-of-memory ladder on
# a real device, each with its own timeout, within 8 minutes; one Markdown table at the end; exit status non-zero if
# any check failed. The checks themselves are in bench/gpu_checks.py.
#
#   bash bench/gpu.sh             # run every check (refuses at once, exit 2, without a CUDA device)
#   bash bench/gpu.sh --dry-run   # any machine: report the environment and print the commands, run nothing
#   bash bench/gpu.sh --only crf amp
#
# PYTHON selects the interpreter (default: python3, or python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PYTHON" bench/gpu_checks.py "$@"
