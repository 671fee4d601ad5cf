#!/usr/bin/env bash
# The GPU check, as one prepared call of a few minutes: installs the wheels carried in .whl/ (see
# bench/gpu_wheels.sh), prints the machine, runs bench/gpu_bench.py (plain MONAI loop vs medtl on the
# four training rows, plus scoring and the fp32-vs-bf16 check) and leaves one table and one JSON file.
#   device run:  bash bench/gpu_suite.sh   (carry: .whl)    locally:  bash bench/gpu_suite.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export MEDTL_PROGRESS=0 MEDTL_LOG_LEVEL=WARNING MEDTL_OFFLINE=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
py=python3; [ -x .venv/bin/python ] && [ ! -d .whl ] && py=.venv/bin/python
"$py" bench/gpu_bench.py --json "$out/gpu_suite.json" "$@" 2>&1 | tee "$out/gpu_suite.txt"
