"""The one filter language of the viewers' tables (TUI and web), with every column's legend.

A query is a list of terms separated by spaces; a row matches when every term holds:

* ``column>value`` with ``> >= < <= = !=``, where ``column`` is exactly a column header of the
  table: the full name the web app and CSV files show, or the short header a terminal shows
  (``cosine>0.2`` or ``cos>0.2``, ``freq_diff>=0.1``, ``refusal_score<0``, ``label=harmful``);
  text columns take ``=`` and ``!=`` (case-insensitive);
* a word the table defines (``minimal``, ``dormant``, ``refused`` …, listed in its legend);
* a bare number: a latent id or prompt index prefix (``12``);
* in tables with a searchable text column, any other word searches that text.

An unknown column or word is an ``InputError`` that names it and lists the columns, so a typo
never silently matches nothing. Imports no UI library.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from store import InputError

OPERATORS = (">=", "<=", "!=", ">", "<", "=")
_COMPARISON = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(>=|<=|!=|>|<|=)(.*)")


@dataclass(frozen=True)
class Column:
    """One column of a table: its header (also its name in filters) and what it means."""

    name: str
    meaning: str
    text: bool = False  # compared as text (= and != only) rather than as a number
    short: str | None = None  # the header in narrow tables (the TUI); a filter takes either name

    @property
    def header(self) -> str:
        return self.short or self.name

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.short is None else (self.name, self.short)


@dataclass(frozen=True)
class Word:
    """A bare word a table understands, and the rows it keeps."""

    name: str
    meaning: str
    rows: Callable[[Mapping[str, np.ndarray]], np.ndarray]  # columns -> bool mask


@dataclass(frozen=True)
class TableSpec:
    """What a table's filter understands: its columns, its words, and how bare numbers and
    other words are read."""

    noun: str  # "latents", "prompts"
    columns: tuple[Column, ...]
    words: tuple[Word, ...] = ()
    number_column: str | None = None  # a bare number is a prefix of this column's values
    search_column: str | None = None  # any other word searches this text column
    examples: tuple[str, ...] = ()
    _by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {name: column for column in self.columns for name in column.names})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def headers(self) -> tuple[str, ...]:
        """The headers of a narrow table (the TUI's): the short name where a column has one."""
        return tuple(column.header for column in self.columns)

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def unknown_column(self, name: str, term: str) -> InputError:
        close = difflib.get_close_matches(name, list(self._by_name), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(column.name + (f" ({column.short})" if column.short else "") for column in self.columns)
        return InputError(f"unknown column {name!r} in {term!r}{hint} Columns: {listed}")

    def filter(self, query: str, columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        """Indices of the rows matching every term of ``query`` (InputError on a bad term)."""
        mask = np.ones(n_rows, bool)
        words = {word.name: word for word in self.words}
        for term in query.split():
            comparison = _COMPARISON.fullmatch(term)
            lowered = term.lower()
            if comparison:
                mask &= self._compare(term, comparison[1], comparison[2], comparison[3], columns)
            elif lowered in words:
                mask &= words[lowered].rows(columns)
            elif self.number_column and lowered.lstrip("#").isdigit():
                values = np.asarray(columns[self.number_column]).astype(str)
                mask &= np.char.startswith(values, lowered.lstrip("#"))
            elif self.search_column:
                mask &= np.char.find(np.char.lower(np.asarray(columns[self.search_column]).astype(str)), lowered) >= 0
            else:
                known = ", ".join(words) or "none"
                raise InputError(f"unknown filter word {term!r}: use a column comparison such as "
                                 f"{self.examples[0] if self.examples else 'column>0'}, an id, or a word ({known})")
        return np.flatnonzero(mask)

    def _compare(self, term: str, name: str, op: str, raw: str, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        if name not in self._by_name:
            raise self.unknown_column(name, term)
        column = self._by_name[name]
        values = np.asarray(columns[column.name])
        if column.text:
            if op not in ("=", "!="):
                raise InputError(f"{name!r} is text: compare it with = or != (as in {name}={raw or 'value'})")
            equal = np.char.lower(values.astype(str)) == raw.lower()
            return equal if op == "=" else ~equal
        try:
            bound = float(raw)
        except ValueError:
            raise InputError(f"{term!r}: {name} is a number column, so the value must be a number, not {raw!r}") from None
        numbers = values.astype(np.float64)
        with np.errstate(invalid="ignore"):  # NaN (not analysed) matches no comparison but !=
            return {">": numbers > bound, "<": numbers < bound, ">=": numbers >= bound, "<=": numbers <= bound,
                    "=": numbers == bound, "!=": numbers != bound}[op]

    def legend(self) -> list[tuple[str, str]]:
        """(name, meaning) of every column and word, for help screens."""
        return [(" · ".join(column.names), column.meaning) for column in self.columns] + [
            (word.name, word.meaning) for word in self.words]

    def legend_markdown(self) -> str:
        rows = ["| Column (· short header) | Meaning |", "|---|---|"] + [
            f"| {' · '.join(f'`{name}`' for name in c.names)} | {c.meaning} |" for c in self.columns]
        text = "\n".join(rows)
        if self.words:
            text += "\n\nWords: " + "; ".join(f"`{word.name}` ({word.meaning})" for word in self.words) + "."
        extra = []
        if self.number_column:
            extra.append(f"a bare number matches a {self.number_column} prefix")
        if self.search_column:
            extra.append(f"any other word searches the {self.search_column}")
        text += (f"\n\nFilter: terms separated by spaces, all must hold; `column>value` with "
                 f"`{' '.join(OPERATORS)}` on any column above (text columns: `=` `!=`)" + ("; " + "; ".join(extra) if extra else "")
                 + ". Examples: " + ", ".join(f"`{example}`" for example in self.examples) + ".")
        return text


def _positive(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda columns: np.asarray(columns[name]).astype(np.float64) > 0


FEATURES = TableSpec(
    noun="latents",
    columns=(
        Column("latent", "the latent's id in the SAE"),
        Column("cosine", "cosine of its decoder row with the refusal direction", short="cos"),
        Column("attribution", "gradient × activation of the refusal score (harmful prompts, post-instruction tokens)",
               short="attr"),
        Column("freq_harmful", "share of harmful prompts on which it fires", short="harm"),
        Column("freq_harmless", "share of harmless prompts on which it fires", short="hless"),
        Column("freq_diff", "freq_harmful − freq_harmless", short="diff"),
        Column("max_active", "its largest activation in the study", short="max"),
        Column("minimal_sets", "how many flipping minimal sets contain it", short="sets"),
        Column("fm_weight", "its linear weight w_i in the FM fit of the refusal score", short="fm_w"),
        Column("fm_interaction", "its share of the FM's pairwise interaction strength", short="fm_i"),
        Column("dormant", "1 if it is a dormant backup (silent until the minimal set is ablated)", short="dorm"),
    ),
    words=(
        Word("minimal", "in at least one flipping minimal set", _positive("minimal_sets")),
        Word("dormant", "a dormant backup latent", _positive("dormant")),
        Word("fm", "in the FM fit", lambda columns: ~np.isnan(np.asarray(columns["fm_weight"], np.float64))),
    ),
    number_column="latent",
    examples=("cosine>0.2", "freq_diff>=0.1", "minimal", "12"),
)

PROMPTS = TableSpec(
    noun="prompts",
    columns=(
        Column("prompt", "the prompt's index in the study"),
        Column("label", "harmful or harmless", text=True),
        Column("refusal_score", "fast refusal score: log-odds of the refusal token at the first response position",
               short="score"),
        Column("refused", "from the greedy generation: 1 refused, 0 complied, -1 not generated", short="gen"),
        Column("tokens", "number of tokens (chat template included)", short="toks"),
        Column("text", "the prompt's text", text=True),
    ),
    words=(
        Word("harmful", "label=harmful", lambda columns: np.char.lower(np.asarray(columns["label"]).astype(str)) == "harmful"),
        Word("harmless", "label=harmless", lambda columns: np.char.lower(np.asarray(columns["label"]).astype(str)) == "harmless"),
        Word("refused", "refused=1", lambda columns: np.asarray(columns["refused"]) == 1),
        Word("complied", "refused=0", lambda columns: np.asarray(columns["refused"]) == 0),
    ),
    number_column="prompt",
    search_column="text",
    examples=("harmful", "refused", "refusal_score>1", "tokens<40", "#12", "bomb"),
)


def check_sort(spec: TableSpec, column: str) -> None:
    if column not in spec.names:  # sorting takes the full names (a dropdown in the web app)
        raise InputError(f"cannot sort by {column!r}; choose one of {', '.join(spec.names)}")
