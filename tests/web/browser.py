"""What the browser tests share: finding Chromium, launching it, serving an app on a free port.

The browser tests use Debian's chromium through Playwright's Python package (no browser
download); ``scripts/install_browser.sh`` installs both. Without them a test module skips,
saying so, on a developer's machine, and FAILS under CI (``CI`` set to true/1), so a CI run
can never go green without having driven a real browser.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_browser() -> str | None:
    """Why no browser test can run here, or None when one can."""
    if CHROMIUM is None:
        return "no chromium executable on PATH or at /usr/bin/chromium"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed"
    return None


def require_browser() -> None:
    """At the top of a browser test module: skip (developer machine) or fail (CI) without one."""
    why = missing_browser()
    if why is None:
        return
    message = f"browser tests cannot run: {why}; run scripts/install_browser.sh (Debian chromium + playwright)"
    if in_ci():
        pytest.fail(message + " — failing because CI is set", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(demo: Any) -> Iterator[str]:
    """Serve a built Gradio app on a free loopback port; yields its URL, closes it after."""
    import app_web

    port = free_port()
    demo.launch(prevent_thread_lock=True, quiet=True, **app_web.launch_options(port=port))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)  # assertions wait as long as actions: this box is shared and slow
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
