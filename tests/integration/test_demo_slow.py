"""`refusal-explorer demo` on the real embedded model (minutes of CPU: marked slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_builds_a_complete_study(tmp_path: Path) -> None:
    out = tmp_path / "demo.h5"
    run = subprocess.run([sys.executable, "-m", "explorer.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    info = subprocess.run([sys.executable, "-m", "explorer.cli", "info", str(out), "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(info.stdout)
    assert summary["complete"] and summary["model"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert summary["prompts"]["harmful"] >= 55 and summary["prompts"]["harmless"] >= 55
    # the model refuses some harmful prompts and (almost) no harmless ones
    assert summary["refused_by_generation"]["harmful"] > 0.1
    assert summary["refused_by_generation"]["harmless"] < 0.1
    # a second run summarises the finished study instead of rebuilding it
    again = subprocess.run([sys.executable, "-m", "explorer.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0
    after = json.loads(subprocess.run([sys.executable, "-m", "explorer.cli", "info", str(out), "--json"], capture_output=True, text=True, check=True).stdout)
    assert after["created_at"] == summary["created_at"]
