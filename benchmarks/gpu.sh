#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): MFU of memclip-base and of a ViT-B/16 CLIP in bf16, steps/s against open_clip
# on identical towers, and the photo loader's images/s against the step's, printed as a table and one JSON line last.
# Needs one CUDA GPU; about 5 minutes on an H100/H200-class GPU (the limit below stops it at 8). Extra arguments go to
# gpu_check.py (e.g. --batch 128 on a GPU with less memory).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$(cd .. && pwd)/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
exec timeout 480 "$PYTHON" gpu_check.py "$@"
