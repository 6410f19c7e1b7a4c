"""`refusal-explorer evaluate STUDY.h5` and `refusal-explorer judge PAIRS.csv`: the benchmark's
command line (ARCHITECTURE §3). Every option is checked and every prompt file read before a
model loads; user mistakes are one line on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from explorer.cli.options import ConfigOptions, float_list, int_list
from explorer.cli.output import emit
from explorer.cli import shell
from explorer.cli.shell import command
from store.errors import InputError

EVALUATE_OPTIONS = ConfigOptions(
    "explorer.benchmark:EvaluateConfig",
    skip=("sweep_values", "sweep_sizes"),
    flags={"interventions": "--intervention"},
    extra={"interventions": {"multiple": True, "default": (), "show_default": False, "metavar": "SPEC"}},
)


def parse_sweep(text: str | None) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``"10,20,30x1,2,4"`` → clamp values (10, 20, 30) × set sizes (1, 2, 4)."""
    if text is None:
        return (), ()
    values, sep, sizes = text.partition("x")
    if not sep:
        raise InputError(f"--sweep expects VALUESxSIZES such as 10,20,30x1,2,4, not {text!r}")
    return float_list(values, "--sweep values"), int_list(sizes, "--sweep sizes")


def _check_semantic(judges: tuple[str, ...]) -> None:
    """The semantic judge's package must be installed before any model loads."""
    if "semantic" in judges:
        from explorer.sentence_model import locate_zip

        locate_zip()



@command("evaluate", interrupted="every finished batch is stored; run the same command again to continue", options=EVALUATE_OPTIONS, options_at=1)
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--sweep", help="Clamp-value × set-size grid of induced refusal, e.g. 10,20,30x1,2,4 (needs a set: or latents: intervention).")
@click.option("--run", default="default", show_default=True, help="Analysis run: where the direction and greedy sets are read and the evaluation is written.")
@click.option("--overwrite", is_flag=True, help="Replace a stored evaluation made with other options.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def evaluate_command(study: Path, sweep: str | None, run: str, overwrite: bool, device: str, as_json: bool, **values: Any) -> None:
    """Benchmark interventions the way the papers report them: refusal rate and attack success
    per category by three judges (95% Wilson intervals, their agreement), induced refusal on
    harmless prompts, XSTest over-refusal, and the KL / CE cost on the model's own harmless
    completions. Resumable: every batch is stored under /analysis/RUN/evaluate, and
    a later call with the same prompts and budgets adds its new interventions to the stored ones.

    \b
      refusal-explorer evaluate study.h5 --intervention direction --intervention set:joint \\
          --prompts harmbench_behaviors_text_test.csv --max-prompts 100 --xstest xstest_prompts.csv
    """
    from explorer.benchmark import Evaluation, load_prompt_sets
    from explorer.benchmark_metrics import format_summary
    from explorer.benchmark_interventions import parse_interventions, sae_layers_needed
    from store import Study
    from store.lock import study_lock

    sweep_values, sweep_sizes = parse_sweep(sweep)
    config = EVALUATE_OPTIONS.build(values, sweep_values=sweep_values, sweep_sizes=sweep_sizes)
    _check_semantic(config.judges)
    # One writer per study, held from before the model loads to the last batch's save, so a
    # second writer is refused at once rather than after hours of generation.
    with study_lock(study, "evaluate"):
        with Study(study) as opened:
            load_prompt_sets(opened, config)  # bad prompt files fail here, before the model loads
            layers = sae_layers_needed(parse_interventions(list(config.interventions)), opened, run)
            live = shell.open_stage_live(opened, device, layers)
        summary = Evaluation(study, live, config, run=run, overwrite=overwrite, progress=True).run()
    saved = f"{study}:/analysis/{run}/evaluate"
    emit({**summary, "saved": saved}, f"{format_summary(summary, list(config.judges))}\n\nsaved      {saved} (every generation and verdict)", as_json=as_json)


@command("judge", interrupted="nothing was judged")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--prompt-column", required=True, help="Column holding the request.")
@click.option("--response-column", required=True, help="Column holding the response to judge.")
def judge_command(pairs: Path, prompt_column: str, response_column: str, as_json: bool) -> None:
    """Judge (request, response) pairs from a CSV/TSV with the three refusal judges (true =
    refusal), so another model's outputs are scored by the same rules as `evaluate`.
    --json prints {"verdicts": [{"substring", "phrase", "semantic"}, …]} in row order."""
    from explorer.judges import JUDGES, judge_file, read_pairs

    read_pairs(pairs, prompt_column, response_column)  # a bad file fails before the model loads
    _check_semantic(JUDGES)
    rows = judge_file(pairs, prompt_column, response_column)
    lines = []
    for i, row in enumerate(rows):
        marks = "  ".join(f"{j} {'REFUSAL' if row[j] else 'answer '}" for j in JUDGES)
        why = "; ".join(f"{j}: {row['evidence'][j]}" for j in JUDGES if row["evidence"][j])
        lines.append(f"{i:>4}  {marks}" + (f"  ({why})" if why else ""))
    lines.append("refusals  " + "  ".join(f"{j} {sum(r[j] for r in rows)}/{len(rows)}" for j in JUDGES))
    facts = {"verdicts": [{j: r[j] for j in JUDGES} for r in rows], "evidence": [r["evidence"] for r in rows]}
    emit(facts, "\n".join(lines), as_json=as_json)
