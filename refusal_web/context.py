"""What every web callback reads: the open study, its analyses, per-layer feature tables.

Built once when the app is built (the study file itself is opened by ``app_web.serve``).
Analysis results are small and loaded here once; the feature table of a layer (a few arrays of
d_sae values) and the prompt texts are read on first use and kept, as are the detail reader's
caches. Callbacks run in Gradio's worker threads: h5py serialises file access itself, and each
cache is filled under a lock.
"""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explorer.browse import NEEDS_SAE_CODES, FeatureTable, PromptTable, StudyBrowser, analyses_present, feature_table, prompt_table
from explorer.results import CandidateResult, DirectionResult, DormantResult, ExperimentResult, FMResult, GreedyResult
from store import InputError, Study


@dataclass
class WebContext:
    """The study and everything derived from it that the views share."""

    study: Study
    run: str
    layers: tuple[int, ...]  # layers with SAE codes, analysis layer first
    missing: dict[str, str | None]  # stage → command that produces it (None when present)
    direction: DirectionResult | None
    candidates: CandidateResult | None
    greedy: GreedyResult | None
    experiments: ExperimentResult | None
    fm: FMResult | None
    dormant: DormantResult | None
    export_dir: Path
    details: StudyBrowser  # cached feature details
    page_size: int = 50
    searchable: bool = False  # live mode with a model that can search a prompt now (refusal_web/search_now.py)
    _tables: dict[int, FeatureTable] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _prompts: PromptTable | None = None

    @property
    def layer(self) -> int | None:
        """The default layer: the one the analyses ran on, else the first with codes."""
        return self.layers[0] if self.layers else None

    def table(self, layer: int) -> FeatureTable:
        with self._lock:
            if layer not in self._tables:
                self._tables[layer] = feature_table(self.study, layer, self.run)
            return self._tables[layer]

    def prompts(self) -> PromptTable:
        """The prompt table (the prompt search filters it), read once."""
        with self._lock:
            if self._prompts is None:
                self._prompts = prompt_table(self.study)
            return self._prompts

    def texts(self) -> np.ndarray:
        """Every prompt's text."""
        return self.prompts().columns["text"]

    def reopen(self) -> None:
        """Read the study again after this app saved into it (a save renames a new file over the
        old one: the open handle still reads the old one). Callbacks in flight keep the old
        handle, which stays open for them."""
        fresh = make_context(Study(self.study.path), self.run, self.export_dir)
        with self._lock:
            for name in ("study", "layers", "missing", "direction", "candidates", "greedy", "experiments", "fm", "dormant",
                         "details"):
                setattr(self, name, getattr(fresh, name))
            self._tables, self._prompts = {}, None

    def pick_layer(self, layer: object) -> int:
        """The layer a view asked for (the default when empty), if it has SAE codes."""
        if not self.layers:
            raise InputError("this study has no SAE codes; cache them with `refusal-explorer cache --sae LAYER=…`")
        chosen = self.layer if layer in (None, "") else whole_number(layer, "layer")
        if chosen not in self.layers:
            raise InputError(f"layer {chosen} has no SAE codes (layers with codes: {', '.join(map(str, self.layers))})")
        return chosen

    def missing_note(self, stage: str, what: str) -> str:
        if self.missing.get(stage) == NEEDS_SAE_CODES:
            return f"*No {what}: this stage {NEEDS_SAE_CODES}.*"
        return f"*No {what} in run `{self.run}` yet: {self.next_step(stage)} to produce it.*"

    def next_step(self, stage: str) -> str:
        """``run `COMMAND` `` for a missing stage, or why this study cannot run it (no SAE codes)."""
        return NEEDS_SAE_CODES if self.missing.get(stage) == NEEDS_SAE_CODES else f"run {self.command_for(stage)}"

    def command_for(self, stage: str) -> str:
        command = self.missing.get(stage)
        run = "" if self.run == "default" else f" --run {self.run}"
        return f"`{command}{run}`" if command else ""


def whole_number(value: object, what: str) -> int:
    """A whole number from a UI field (Number gives floats, Dropdown strings); InputError if not."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, not {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    return int(number)


def page_of(rows: np.ndarray, number: int, page_size: int) -> tuple[np.ndarray, int, int]:
    """The rows of page ``number`` (clamped into range), that page number, and the page count."""
    pages = max(1, math.ceil(len(rows) / page_size))
    number = min(max(1, number), pages)
    return rows[(number - 1) * page_size : number * page_size], number, pages


def make_context(study: Study, run: str = "default", export_dir: Path | None = None) -> WebContext:
    """Load the analyses of ``run`` and pick the layers the views show."""
    candidates = CandidateResult.load(study, run)
    with_codes = [layer for layer in study.meta.layers if study.has_codes(layer)]
    if candidates is not None and candidates.layer in with_codes:
        with_codes.remove(candidates.layer)
        with_codes.insert(0, candidates.layer)
    export = export_dir or Path(tempfile.mkdtemp(prefix="refusal-web-"))
    greedy, fm, dormant = GreedyResult.load(study, run), FMResult.load(study, run), DormantResult.load(study, run)
    return WebContext(
        study=study, run=run, layers=tuple(with_codes), missing=analyses_present(study, run),
        direction=DirectionResult.load(study, run), candidates=candidates, greedy=greedy,
        experiments=ExperimentResult.load(study, run), fm=fm, dormant=dormant, export_dir=export,
        details=StudyBrowser(study, run),
    )
