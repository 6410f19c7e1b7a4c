#!/usr/bin/env bash
# Drift check: build a second environment from the NEWEST releases pyproject allows (no lock)
# and run the test suite there, so a new transformers / sae-lens / gradio / textual release
# that breaks the project is seen before a new user meets it. Not part of .ci/run, whose
# installs come from requirements.lock.
#   scripts/test_latest.sh [pytest args]      (venv: .venv-latest, rebuilt each run)
# torch stays at the build install.sh picks (the local CPU wheel): the newest torch on PyPI is
# a multi-GB CUDA build, and torch is the one dependency the lock leaves to install.sh anyway.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${VENV_LATEST:-.venv-latest}"
rm -rf "$venv"
LOCK=none bash scripts/install.sh "$venv" dev,judge
echo "versions that differ from requirements.lock:"
"$venv/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable | LC_ALL=C sort \
  | LC_ALL=C comm -23 - <(grep -v '^#' requirements.lock | LC_ALL=C sort) | sed 's/^/  /' || true
"$venv/bin/python" -m pytest "$@"
