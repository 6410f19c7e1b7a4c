"""Terminal viewer of a study file: ``python app_tui.py [STUDY.h5] [--run NAME] [--layer L]``.

Reads the study file only: no model, no GPU, no network, so it works over SSH. Also started by
``refusal-explorer tui STUDY.h5``, which calls ``run``. Textual is imported only when the app
starts, so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from store import InputError, Study

if TYPE_CHECKING:
    from refusal_tui.app import RefusalApp

DEMO_STUDY = Path("studies") / "demo.h5"


def build_app(path: Path, *, run: str = "default", layer: int | None = None) -> RefusalApp:
    """Open and check the study, ready to run; bad input raises ``InputError`` (one line)."""
    from refusal_tui.app import RefusalApp
    from refusal_tui.data import StudyData

    study = Study(path)
    try:
        runs = study.analysis_runs()
        if runs and run not in runs:
            raise InputError(f"{path}: no analysis run '{run}' (runs: {', '.join(runs)}); choose one with --run")
        data = StudyData(study, run=run, layer=layer)
    except BaseException:
        study.close()
        raise
    return RefusalApp(data)


def run(path: Path | None, *, run: str = "default", layer: int | None = None) -> int:
    """Start the TUI on ``path`` (or ./studies/demo.h5); returns the exit status (2: bad input)."""
    if path is None:
        if not DEMO_STUDY.exists():
            print(f"No study file given and no demo study at ./{DEMO_STUDY}. Make one with "
                  "`refusal-explorer demo`, or pass one: `refusal-explorer tui STUDY.h5`.", file=sys.stderr)
            return 2
        path = DEMO_STUDY
    try:
        app = build_app(Path(path), run=run, layer=layer)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app_tui.py", description="Browse a Refusal Explorer study in the terminal.")
    parser.add_argument("study", nargs="?", type=Path, help=f"study file (default: ./{DEMO_STUDY} if present)")
    parser.add_argument("--run", default="default", help="analysis run to show (default: %(default)s)")
    parser.add_argument("--layer", type=int, default=None, help="layer whose features to show (default: the analysed one)")
    args = parser.parse_args(argv)
    return run(args.study, run=args.run, layer=args.layer)


if __name__ == "__main__":
    sys.exit(main())
