"""Terminal viewer of a study file: ``python app_tui.py [STUDY.h5] [--run NAME] [--layer L]``.

Reads the study file only: no model, no GPU, no network, so it works over SSH. ``command`` is
the ``refusal-explorer tui`` command (the CLI shell imports it by name, ARCHITECTURE §3);
``main`` runs that same command on its own. Textual is imported only when the app starts, so
importing this module stays cheap.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from explorer.cli.shell import CONTEXT, run_standalone
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
        if run not in runs and (runs or run != "default"):  # an unanalysed study opens on the default run
            raise InputError(f"{path}: no analysis run '{run}' (runs: {', '.join(runs) or 'none yet'}); choose one with --run")
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


@click.command("tui", context_settings=CONTEXT)
@click.argument("study", type=click.Path(path_type=Path), required=False)
@click.option("--run", "run_name", default="default", show_default=True, help="Analysis run to show.")
@click.option("--layer", type=int, help="SAE layer to show (default: the first with codes).")
def command(study: Path | None, run_name: str, layer: int | None) -> None:
    """Browse a study file in the terminal (works over SSH; no model needed).

    Without STUDY it opens ./studies/demo.h5 (made by `refusal-explorer demo`). An interactive
    viewer prints no summary, so it has no --json.
    """
    sys.exit(run(study, run=run_name, layer=layer))


def main(argv: list[str] | None = None) -> int:
    return run_standalone(command, argv, "app_tui.py")


if __name__ == "__main__":
    sys.exit(main())
