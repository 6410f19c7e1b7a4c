"""Small formatting rules of the TUI."""

from refusal_tui.render import percent


def test_small_shares_are_not_shown_as_zero() -> None:
    assert percent(0.0) == "0.0%" and percent(1 / 5298) == "<0.1%" and percent(0.25) == "25.0%"
