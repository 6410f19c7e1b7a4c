#!/usr/bin/env bash
# Create (or update) the project's virtual environment: scripts/install.sh VENV EXTRAS
#   VENV    path of the virtual environment (default .venv)
#   EXTRAS  comma-separated extras of refusal-explorer, e.g. "dev" or "demo,dev"
# torch goes in first: CPU machines get the CPU build 2.13.0 (a local wheel on the project's
# machines, seconds to install), while an existing torch, e.g. a GPU user's CUDA build, is kept.
set -euo pipefail
venv="${1:-.venv}"
extras="${2:-dev}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "installing torch (GPU build: NVIDIA GPU found)"
    "${pip[@]}" install -q "${TORCH_SPEC:-torch>=2.4}"
  else
    echo "installing torch (CPU build)"
    "${pip[@]}" install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
echo "installing refusal-explorer[$extras]"
"${pip[@]}" install -q -e ".[$extras]"
