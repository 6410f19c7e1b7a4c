"""The wheel holds every package of the source tree, so a non-editable install has the CLI too."""

from __future__ import annotations

import tomllib
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("store", "cache", "explorer", "refusal_tui", "refusal_web")


def test_every_package_in_the_tree_is_found_by_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = set(setuptools.find_packages(where=str(ROOT), include=config["packages"]["find"]["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL for init in (ROOT / top).rglob("__init__.py")
    }
    assert {"explorer.cli", "explorer.cli.stages", "refusal_tui.screens"} <= on_disk
    assert on_disk <= found and not {p for p in found if p.startswith("tests")}
