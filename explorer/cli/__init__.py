"""The `refusal-explorer` command line: the one place every command and stage is registered.

Commands register themselves on import (``@command`` / ``@stage`` of explorer/cli/shell.py);
the imports below are the registry. The stages are imported in pipeline order, which is the
order ``analyze --help`` lists them and the demo runs them. To add a stage, follow
docs/ARCHITECTURE.md §5: write explorer/cli/stages/<name>.py and add its name here.
"""

from __future__ import annotations

from explorer.cli import commands  # noqa: F401  cache, merge, info, setup-model, demo, train-sae
from explorer.cli import evaluate  # noqa: F401  evaluate, judge
from explorer.cli.shell import STAGES, analyze, cli
from explorer.cli.stages import refusal_tokens, direction, candidates, greedy, experiments, fm, dormant, why  # noqa: F401  pipeline order
from explorer.cli.stages import graph, categories, jailbreak, probe  # noqa: F401  the second paper (Yeo et al.)

__all__ = ["STAGES", "analyze", "cli", "main"]


def main() -> None:
    cli(prog_name="refusal-explorer")
