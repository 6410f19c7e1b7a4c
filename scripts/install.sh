#!/usr/bin/env bash
# Create (or update) the project's virtual environment: scripts/install.sh VENV EXTRAS
#   VENV    path of the virtual environment (default .venv)
#   EXTRAS  comma-separated extras of refusal-explorer, e.g. "dev" or "demo,dev"
# Versions come from requirements.lock (the tested set; scripts/lock.sh refreshes it), so a
# dependency's new release never changes what a fresh clone installs. LOCK=none resolves
# pyproject's ranges afresh instead (scripts/test_latest.sh, scripts/lock.sh).
# torch goes in first: CPU machines get the CPU build 2.13.0 (a local wheel on the project's
# machines, seconds to install), while an existing torch, e.g. a GPU user's CUDA build, is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-.venv}"
extras="${2:-dev}"
lock="${LOCK:-$here/requirements.lock}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "installing torch (GPU build: NVIDIA GPU found)"
    "${pip[@]}" install -q "${TORCH_SPEC:-torch>=2.6}"
  else
    echo "installing torch (CPU build)"
    "${pip[@]}" install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
constraints=()
if [ "$lock" != none ]; then
  [ -f "$lock" ] || { echo "install.sh: lock file $lock is missing (scripts/lock.sh makes it)" >&2; exit 2; }
  constraints=(-c "$lock")
  echo "installing refusal-explorer[$extras] at the versions in $(basename "$lock")"
else
  echo "installing refusal-explorer[$extras] at the newest versions pyproject allows"
fi
"${pip[@]}" install -q ${constraints[@]+"${constraints[@]}"} -e "$here[$extras]"
