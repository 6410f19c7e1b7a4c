"""The Prompts tab's "search now" (live mode): greedy-search a prompt that has no minimal set
yet, with the stored run's settings, and save the set into the study.

The search runs through the live model's ``search_into_study`` (``explorer.greedy_more``), which
takes the study's writer lock: when another process is writing the study the answer is one line
naming it, at once. After a save the app re-reads the study (``WebContext.reopen``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from refusal_web.context import WebContext, whole_number
from store import InputError


def already_has(ctx: WebContext, prompt: int) -> str | None:
    """Why no search is needed: the prompt has a set, or was searched without one; else None."""
    greedy = ctx.greedy
    if greedy is None:
        return None
    for s in [int(s) for s in (greedy.prompt == prompt).nonzero()[0] if greedy.per_prompt()[s]]:
        if greedy.flips()[s]:
            return f"prompt {prompt} already has a minimal set (set #{s}: {', '.join(map(str, greedy.latents_of(s).tolist()))})"
        return f"prompt {prompt} was already searched: no flipping set within the top {greedy.k} candidates"
    return None


def search_now(ctx: WebContext, model: Any, index: object) -> Iterator[str]:
    """Status lines while the search runs; the last one says what was found and saved."""
    try:
        prompt = whole_number(index, "prompt")
        if not 0 <= prompt < ctx.study.n_prompts:
            raise InputError(f"prompt {prompt} is out of range: the study has {ctx.study.n_prompts:,} prompts")
        search = getattr(model, "search_into_study", None)
        if search is None:
            raise InputError("this live model cannot run searches")
        done = already_has(ctx, prompt)
        if done:
            yield f"Nothing to do: {done}."
            return
        yield (f"Searching prompt {prompt} with the run's greedy settings… the model is busy meanwhile (live "
               "generation waits); the set is saved into the study when found.")
        started = time.monotonic()
        summary = search(ctx.study.path, ctx.run, [prompt])
    except InputError as error:  # includes StudyBusyError: another writer holds the study
        yield f"⚠️ {error}"
        return
    ctx.reopen()
    seconds = time.monotonic() - started
    found = summary["sets"][0]
    if found["latents"] is None:
        yield (f"Searched in {seconds:.0f} s and saved: **no flipping set within the top {summary['k']}** candidates "
               f"(all ablated: score {found['score']:+.3f}).")
        return
    confirmed = {1: "the ablated generation complies", 0: "the ablated generation still refuses", -1: "not generated"}
    yield (f"Searched in {seconds:.0f} s and saved: minimal set **[{', '.join(map(str, found['latents']))}]** flips "
           f"prompt {prompt} (score {found['score']:+.3f}; {confirmed.get(found['confirmed'], '?')}).")
