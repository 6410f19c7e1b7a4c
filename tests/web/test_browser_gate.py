"""The browser tests' gate: skip on a developer machine without Chromium, fail under CI."""

from __future__ import annotations

import pytest

from tests.web import browser


def test_missing_browser_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no chromium executable.*failing because CI is set"):
        browser.require_browser()


def test_missing_browser_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install_browser.sh"):
        browser.require_browser()
