"""Rows of a user's table file (CSV, TSV, JSON list of objects, JSONL), for the stages that
need more than a prompt column: a category column (`analyze categories`) or plain/wrapped
pairs (`analyze jailbreak`). Every problem is one ``InputError`` line naming the file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from cache.prompts import CSV_DEFAULT_COLUMNS
from store.errors import InputError


def read_rows(path: Path | str) -> list[dict[str, str]]:
    """Every row as a dict of strings (JSON values that are not strings are dumped as JSON)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read as UTF-8 text ({error})") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        rows = [{str(k): (v or "") for k, v in row.items() if k is not None} for row in reader]
    elif suffix in (".json", ".jsonl"):
        try:
            data = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise InputError(f"{path}: expected a list of objects (one per row)")
        rows = [{str(k): v if isinstance(v, str) else ("" if v is None else json.dumps(v)) for k, v in row.items()} for row in data]
    else:
        raise InputError(f"{path}: unknown table format {path.suffix!r}; use .csv, .tsv, .json or .jsonl")
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def pick_column(path: Path | str, rows: Sequence[dict[str, str]], wanted: str | None, defaults: Sequence[str], what: str) -> str:
    """The column ``wanted`` (exact, then ignoring case) or the first of ``defaults`` present."""
    columns = list(rows[0])
    for name in [wanted] if wanted else defaults:
        if name in columns:
            return name
        folded = [c for c in columns if c.lower() == name.lower()]
        if folded:
            return folded[0]
    shown = ", ".join(columns[:12])
    asked = f"column {wanted!r}" if wanted else f"a {what} column ({', '.join(defaults)})"
    raise InputError(f"{path}: has no {asked}; its columns are {shown}")


def filter_rows(path: Path | str, rows: list[dict[str, str]], where: Sequence[str]) -> list[dict[str, str]]:
    """Keep the rows matching every ``COLUMN=VALUE``."""
    for condition in where:
        column, sep, value = condition.partition("=")
        if not sep or not column:
            raise InputError(f"--where expects COLUMN=VALUE, not {condition!r}")
        column = pick_column(path, rows, column, (), "filter")
        rows = [row for row in rows if row.get(column, "") == value]
    if not rows:
        raise InputError(f"{path}: no rows match {' and '.join(where)}")
    return rows


def categorised_prompts(
    path: Path | str, *, category_column: str, text_column: str | None = None, where: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """(prompt text, category) of every row with both non-empty, duplicates dropped."""
    rows = filter_rows(path, read_rows(path), where)
    text_col = pick_column(path, rows, text_column, CSV_DEFAULT_COLUMNS, "prompt")
    category_col = pick_column(path, rows, category_column, (), "category")
    seen: set[str] = set()
    out = []
    for row in rows:
        text, category = row.get(text_col, "").strip(), row.get(category_col, "").strip()
        if text and category and text not in seen:
            seen.add(text)
            out.append((text, category))
    if not out:
        raise InputError(f"{path}: no row has both a prompt and a {category_col!r} value")
    return out
