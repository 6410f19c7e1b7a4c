"""Links between tabs: a button in one tab fills another tab's inputs, switches to it and shows
what it names ("open this latent in Features", "send to Live").

A tab that can be opened this way hands back a ``Target`` when it is built; ``build_app`` wires
the buttons of the tabs built before or after it with ``open_in`` (Gradio lets an event update
any component of the same Blocks, whichever tab it sits in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr


Send = tuple[Callable[..., Any], Callable[..., "dict[str, Any] | None"], list[Any]]
"""A button's event (e.g. ``button.click``), what it fills, and that function's input components."""


@dataclass
class Target:
    """A tab other tabs can open something in: the fields they fill, and what shows it."""

    tab: str  # the gr.Tab id
    fields: dict[str, Any]  # name → component that a link fills
    show: Callable[..., Any] | None = None  # run after the fields are filled (None: the fields are the view)
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)


def open_in(tabs: gr.Tabs, trigger: Callable[..., Any], target: Target, values: Callable[..., dict[str, Any] | None],
            inputs: Sequence[Any] = ()) -> None:
    """When ``trigger`` fires, fill ``target``'s fields from ``values(*inputs)`` (a dict by field
    name; fields it leaves out keep their value; None: nothing to open), switch to its tab and
    show it."""
    names = list(target.fields)

    def fill(*args: Any) -> tuple[Any, ...]:
        got = values(*args)
        if got is None:
            return tuple(gr.skip() for _ in range(len(names) + 1))
        return (*(got.get(name, gr.skip()) for name in names), gr.Tabs(selected=target.tab))

    event = trigger(fill, list(inputs), [*target.fields.values(), tabs])
    if target.show is not None:
        event.then(target.show, target.inputs, target.outputs)

