#!/usr/bin/env bash
# Refresh requirements.lock: the exact versions `make test`, `make demo` and CI install.
#
#   scripts/lock.sh            resolve pyproject's ranges afresh in a throw-away venv (newest
#                              releases allowed), freeze it, write requirements.lock
#   scripts/lock.sh --from V   freeze an existing venv V instead (one you just tested)
#
# Then run `make test-latest`-style checks on the new lock: `rm -rf .venv && make test`.
# torch is not in the lock: scripts/install.sh chooses the build (the CPU wheel 2.13.0 on
# machines without an NVIDIA GPU, an existing CUDA build otherwise), and the lock must not
# fight a GPU user's torch. The project itself (editable) is left out too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
extras="demo,dev,judge,stronger"
if [ "${1:-}" = "--from" ]; then
  venv="${2:?usage: scripts/lock.sh --from VENV}"
else
  venv="$(mktemp -d)/venv"
  trap 'rm -rf "$(dirname "$venv")"' EXIT
  LOCK=none bash scripts/install.sh "$venv" "$extras"
fi
{
  echo "# Tested versions for refusal-explorer[$extras]; made by scripts/lock.sh on $(date -u +%Y-%m-%d)"
  echo "# with $("$venv/bin/python" -c 'import platform; print("Python", platform.python_version(), platform.machine())')."
  echo "# Installed as pip constraints by scripts/install.sh (make test, make demo, .ci/run)."
  "$venv/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable \
    | grep -v -i -E '^(torch|triton|nvidia-[a-z0-9-]+|refusal-explorer)(==| @)' \
    | LC_ALL=C sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pinned packages)"
