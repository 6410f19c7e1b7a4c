#!/usr/bin/env bash
# Install what the web end-to-end test needs: Debian's chromium and Playwright's Python package.
#
# Never runs `playwright install`: the test drives the system chromium through
# executable_path, so no browser is downloaded. Safe to run twice; each step is a no-op when
# its piece is already there. Usage: scripts/install_browser.sh [PYTHON]  (default: .venv/bin/python)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-$here/.venv/bin/python}"

if [ -x /usr/bin/chromium ]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "chromium is missing and installing it needs root: run this script as root (or sudo)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends chromium
fi

if "$python" -c "import playwright" 2>/dev/null; then
    echo "playwright: already installed in $python"
else
    "$python" -m pip install "playwright>=1.45"
fi
