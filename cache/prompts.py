"""Prompt sets: load them from files, split them, fingerprint them.

A prompt file holds one kind of prompt (harmful or harmless); the caller names the label.
Formats, picked by the file's extension:

* ``.json``  a list of strings, or of objects with an ``instruction``, ``prompt`` or ``text``
  key (the first that is present) and an optional ``category``; an object whose ``<label>``
  key holds such a list (the layout of the built-in demo set) is accepted as well.
* ``.jsonl`` one such string or object per line; blank lines are skipped.
* ``.csv`` / ``.tsv`` a header row; the prompt column is ``column`` if given, else the first of
  ``instruction, prompt, text, goal, forbidden_prompt, Behavior`` that exists (names match
  exactly first, then ignoring case). A ``category`` (or ``SemanticCategory``) column, if
  present, fills ``Prompt.category``. HarmBench's contextual behaviours: where the prompt
  column is ``Behavior`` and a row's ``ContextString`` is not empty, the prompt is the context,
  a ``---`` separator line, then the behaviour, as HarmBench's own evaluation writes it.
* ``.txt`` one prompt per line; blank lines are skipped.

``column`` also names the key to read from JSON / JSONL objects; it is ignored for ``.txt``.

Prompts are stripped of surrounding whitespace, empty ones are dropped, order is kept and
exact duplicates are dropped (the first is kept; the number dropped is logged as a warning on
the ``cache.prompts`` logger). Every problem with the file raises ``store.errors.InputError``
with one line that names the file.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from store.errors import InputError

log = logging.getLogger(__name__)

TEXT_KEYS: tuple[str, ...] = ("instruction", "prompt", "text")
CSV_DEFAULT_COLUMNS: tuple[str, ...] = (
    "instruction",
    "prompt",
    "text",
    "goal",
    "forbidden_prompt",
    "Behavior",
)
CSV_CATEGORY_COLUMNS: tuple[str, ...] = ("category", "SemanticCategory")
FORMATS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
}
SPLITS: tuple[str, ...] = ("train", "val")
DEMO_DATASET = "demo"


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """One prompt with its label ("harmful" / "harmless"), source data set and split."""

    text: str
    label: str
    dataset: str
    split: str = "train"
    category: str = ""


# --------------------------------------------------------------------------------------------
# Loading


def load_prompts(
    path: Path | str,
    *,
    label: str,
    column: str | None = None,
    dataset: str | None = None,
    category_column: str | None = None,
) -> list[Prompt]:
    """Read the prompts of one file, all with ``label``; see the module docstring for formats.

    ``dataset`` defaults to the file's stem; ``category_column`` names the CSV/TSV column that
    holds each prompt's category instead of the default names (JSON keeps ``category``).
    Raises ``InputError`` (one line naming the file) for a missing, empty, unreadable or
    malformed file.
    """
    if not isinstance(label, str) or not label.strip():
        raise ValueError("label must be a non-empty string")
    path = Path(path)
    if not path.exists():
        raise _error(path, "no such file")
    if not path.is_file():
        raise _error(path, "is not a file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        shown = f"'{path.suffix}'" if path.suffix else "(no extension)"
        raise _error(
            path,
            f"unknown prompt file format {shown}; use .json, .jsonl, .csv, .tsv or .txt",
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from exc
    text = _decode(path, raw)
    if not text.strip():
        raise _error(path, "the file is empty")

    if fmt == "json":
        items = _parse_json(path, text, label=label, key=column)
    elif fmt == "jsonl":
        items = _parse_jsonl(path, text, key=column)
    elif fmt in ("csv", "tsv"):
        items = _parse_csv(path, text, column=column, delimiter="\t" if fmt == "tsv" else ",", category_column=category_column)
    else:
        items = [(line, "") for line in text.split("\n")]

    name = dataset if dataset is not None else path.stem
    prompts = _build(items, label=label, dataset=name, where=str(path))
    if not prompts:
        raise _error(path, "no prompts found (every entry is blank)")
    return prompts


def demo_prompts() -> tuple[list[Prompt], list[Prompt]]:
    """The built-in demo set, ``(harmful, harmless)``, with dataset name ``"demo"``."""
    resource = files("cache") / "data" / "demo_prompts.json"
    where = "built-in demo_prompts.json"
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a broken install, not a user mistake
        raise InputError(f"{where}: cannot be read ({exc}); reinstall the package") from None
    out: list[list[Prompt]] = []
    for label in ("harmful", "harmless"):
        entries = data.get(label) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise InputError(f"{where}: has no '{label}' list; reinstall the package")
        items = _json_items(Path(where), entries, key=None, location="item")
        out.append(_build(items, label=label, dataset=DEMO_DATASET, where=where))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# Splitting and fingerprinting


def split_prompts(
    prompts: Iterable[Prompt], *, holdout_fraction: float, seed: int
) -> list[Prompt]:
    """Assign each prompt to "train" or "val", deterministically; returns new ``Prompt`` objects.

    Stratified by label: within each label, ``round(n * holdout_fraction)`` prompts go to
    "val" (at least one and at most ``n - 1`` when the fraction is above zero and ``n >= 2``).
    Which ones is decided by a sha256 of (seed, label, text), so the same seed gives the same
    split whatever the order of the input. The output keeps the input order.
    """
    if not isinstance(holdout_fraction, (int, float)) or not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    prompts = list(prompts)
    by_label: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_label.setdefault(p.label, []).append(i)

    val: set[int] = set()
    for label, idx in by_label.items():
        n = len(idx)
        k = math.floor(n * holdout_fraction + 0.5)
        if holdout_fraction > 0 and n >= 2:
            k = min(n - 1, max(1, k))
        elif n < 2:
            k = 0
        ranked = sorted(idx, key=lambda i: (_split_key(seed, label, prompts[i].text), i))
        val.update(ranked[:k])
    return [replace(p, split="val" if i in val else "train") for i, p in enumerate(prompts)]


def prompt_set_digest(prompts: Iterable[Prompt]) -> str:
    """A sha256 (hex) over the ordered (label, text) pairs: the same prompts in the same order
    give the same digest; a changed, added, removed, relabelled or reordered prompt changes it.
    Dataset, split and category do not enter it."""
    payload = json.dumps(
        [[p.label, p.text] for p in prompts], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Internals


def _error(path: Path | str, message: str) -> InputError:
    line = f"{path}: {message}"
    return InputError(line.replace("\r", "\\r").replace("\n", "\\n"))


def _decode(path: Path, raw: bytes) -> str:
    offset = 0
    if raw.startswith(codecs.BOM_UTF8):
        offset = len(codecs.BOM_UTF8)
    try:
        return raw[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = offset + exc.start
        raise _error(
            path,
            f"not UTF-8 text (invalid byte 0x{raw[at]:02x} at byte offset {at}); "
            "save it as UTF-8",
        ) from None


def _parse_json(path: Path, text: str, *, label: str, key: str | None) -> list[tuple[Any, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(data, dict):
        if isinstance(data.get(label), list):
            data = data[label]
        else:
            keys = ", ".join(repr(k) for k in list(data)[:10]) or "none"
            raise _error(
                path,
                f"expected a JSON list of prompts (or an object with a '{label}' list), "
                f"got an object with keys {keys}",
            )
    if not isinstance(data, list):
        raise _error(path, f"expected a JSON list of prompts, got {_kind(data)}")
    if not data:
        raise _error(path, "no prompts found (the JSON list is empty)")
    return _json_items(path, data, key=key, location="item")


def _parse_jsonl(path: Path, text: str, *, key: str | None) -> list[tuple[Any, str]]:
    items: list[tuple[Any, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(
                path, f"invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        items.append(_json_item(path, value, key=key, where=f"line {lineno}"))
    return items


def _json_items(
    path: Path, entries: list[Any], *, key: str | None, location: str
) -> list[tuple[Any, str]]:
    return [
        _json_item(path, value, key=key, where=f"{location} {i}")
        for i, value in enumerate(entries, start=1)
    ]


def _json_item(path: Path, value: Any, *, key: str | None, where: str) -> tuple[Any, str]:
    """One JSON value -> (text, category). ``where`` is e.g. "item 3" or "line 7" (from 1)."""
    if isinstance(value, str):
        return value, ""
    if not isinstance(value, dict):
        raise _error(path, f"{where} is {_kind(value)}; expected a string or an object")
    keys = (key,) if key is not None else TEXT_KEYS
    found = next((k for k in keys if k in value), None)
    if found is None:
        has = ", ".join(repr(k) for k in list(value)[:10]) or "no keys"
        wanted = " or ".join(repr(k) for k in keys)
        raise _error(path, f"{where} has no {wanted} key (it has {has})")
    text = value[found]
    if not isinstance(text, str):
        raise _error(path, f"{where}: '{found}' is {_kind(text)}, not a string")
    category = value.get("category")
    return text, "" if category is None else str(category)


def _parse_csv(
    path: Path, text: str, *, column: str | None, delimiter: str, category_column: str | None = None
) -> list[tuple[Any, str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise _error(path, "the file is empty")
        names = [h.strip() for h in header]
        shown = ", ".join(repr(n) for n in names)
        if column is not None:
            col = _find_column(names, (column,))
            if col is None:
                raise _error(path, f"no column '{column}'; the columns are {shown}")
        else:
            col = _find_column(names, CSV_DEFAULT_COLUMNS)
            if col is None:
                raise _error(
                    path,
                    "no prompt column (looked for "
                    + ", ".join(CSV_DEFAULT_COLUMNS)
                    + f"); the columns are {shown}; name the column to use",
                )
        cat = _find_column(names, (category_column,) if category_column else CSV_CATEGORY_COLUMNS)
        if category_column and cat is None:
            raise _error(path, f"no category column '{category_column}'; the columns are {shown}")
        # HarmBench's contextual behaviours are asked about their context (see the module doc)
        context = _find_column(names, ("ContextString",)) if names[col].lower() == "behavior" else None
        items: list[tuple[Any, str]] = []
        for row in reader:
            value = row[col] if col < len(row) else ""
            if context is not None and context < len(row) and row[context].strip():
                value = f"{row[context].strip()}\n\n---\n\n{value.strip()}"
            category = row[cat] if cat is not None and cat < len(row) else ""
            items.append((value, category.strip()))
    except csv.Error as exc:
        raise _error(path, f"malformed CSV at line {reader.line_num}: {exc}") from None
    return items


def _find_column(names: Sequence[str], wanted: Sequence[str]) -> int | None:
    for w in wanted:
        if w in names:
            return names.index(w)
    lowered = [n.lower() for n in names]
    for w in wanted:
        if w.lower() in lowered:
            return lowered.index(w.lower())
    return None


def _build(
    items: Iterable[tuple[Any, str]], *, label: str, dataset: str, where: str
) -> list[Prompt]:
    seen: set[str] = set()
    out: list[Prompt] = []
    dropped = 0
    for text, category in items:
        text = text.strip()
        if not text:
            continue
        if text in seen:
            dropped += 1
            continue
        seen.add(text)
        out.append(Prompt(text=text, label=label, dataset=dataset, category=category))
    if dropped:
        log.warning("%s: dropped %d duplicate prompt(s)", where, dropped)
    return out


def _split_key(seed: int, label: str, text: str) -> str:
    return hashlib.sha256(f"{seed}\x00{label}\x00{text}".encode("utf-8")).hexdigest()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
