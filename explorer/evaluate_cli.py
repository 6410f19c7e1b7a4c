"""`refusal-explorer evaluate STUDY.h5`, `refusal-explorer judge PAIRS.csv` and
`refusal-explorer analyze refusal-tokens STUDY.h5`: the command-line side of the benchmark.

Every option is checked (and every prompt file read) before a model loads; user mistakes are
one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from explorer.cli_support import int_list, one_line_errors
from store.errors import InputError

_errors = one_line_errors("every finished batch is stored; run the same command again to continue")


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} expects comma-separated numbers, not {text!r}") from None
    if not values:
        raise InputError(f"{option} is empty")
    return values


def parse_sweep(text: str | None) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``"10,20,30x1,2,4"`` → clamp values (10, 20, 30) × set sizes (1, 2, 4)."""
    if text is None:
        return (), ()
    values, sep, sizes = text.partition("x")
    if not sep:
        raise InputError(f"--sweep expects VALUESxSIZES such as 10,20,30x1,2,4, not {text!r}")
    return _floats(values, "--sweep values"), int_list(sizes, "--sweep sizes")


def _pct(value: Any) -> str:
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:5.0%}"


def _interval(rate: Any, interval: Any) -> str:
    if rate is None:
        return "n/a"
    low, high = interval
    return f"{rate:.0%} [{low:.0%}–{high:.0%}]"


def format_summary(summary: dict[str, Any], judges: list[str]) -> str:
    """The tables `evaluate` prints: per intervention, per category, judges' agreement."""
    lines = []
    for name, entry in summary["interventions"].items():
        lines.append(f"\n== {name}: {entry.get('describe', '')}")
        lines.append(f"harmful    n={entry['n']}  refusal (95% Wilson) " + "  ".join(
            f"{j} {_interval(entry['refusal_rate'][j], entry['refusal_interval'][j])}" for j in judges))
        lines.append("           attack success " + "  ".join(f"{j} {_pct(entry['asr'][j])}" for j in judges))
        pairs = entry.get("agreement", {})
        if pairs:
            lines.append("           judges agree " + "  ".join(
                f"{pair} {v['agreement']:.0%} (κ {v['kappa']:.2f})" if v["kappa"] is not None else f"{pair} {v['agreement']:.0%}"
                for pair, v in pairs.items() if v["agreement"] is not None))
        width = max([len(c) for c in entry.get("by_category", {})] + [8])
        if entry.get("by_category"):
            lines.append(f"           {'category':<{width}}    n  " + "  ".join(f"{j:>9}" for j in judges) + "   (refusal rate)")
            for category, cell in entry["by_category"].items():
                lines.append(f"           {category:<{width}} {cell['n']:>4}  " + "  ".join(f"{_pct(cell['refusal_rate'][j]):>9}" for j in judges))
        harmless = entry.get("harmless")
        if harmless:
            what = "baseline refusal" if name == "none" else "induced refusal"
            lines.append(f"harmless   n={harmless['n']}  {what} " + "  ".join(
                f"{j} {_interval(harmless['refusal_rate'][j], harmless['refusal_interval'][j])}" for j in judges))
        elif name != "none":
            lines.append("harmless   induced refusal: not measured (no upward form: add the direction, clamp latents up, or --induce-clamp for a set)")
        xstest = entry.get("over_refusal")
        if xstest:
            lines.append(f"xstest     n={xstest['n']}  over-refusal " + "  ".join(
                f"{j} {_interval(xstest['refusal_rate'][j], xstest['refusal_interval'][j])}" for j in judges))
        if name != "none":
            ce, kl = entry.get("ce_increase"), entry.get("kl")
            lines.append(
                "side effect on the baseline's harmless completions: "
                + (f"CE +{ce:.3f} nats/token" if ce is not None else "CE n/a")
                + (f", first-token KL {kl:.3f}" if kl is not None else "")
            )
    if summary.get("sweep"):
        lines.append("\n== sweep: induced refusal on harmless prompts (latents clamped to value; first SIZE latents of the set)")
        for cell in summary["sweep"]:
            lines.append(f"clamp {cell['value']:>6g}  size {cell['size']:>3}  " + "  ".join(f"{j} {_pct(cell['refusal_rate'][j])}" for j in judges))
    return "\n".join(lines)


def _live(study: Any, device: str, sae_layers: list[int]) -> Any:
    """The study's model and SAEs; a seam the tests replace with tiny models."""
    from explorer.live import open_live

    return open_live(study, device=device, sae_layers=sae_layers)


def _check_semantic(judges: tuple[str, ...]) -> None:
    """The semantic judge's package must be installed before any model loads."""
    if "semantic" in judges:
        from explorer.sentence_model import locate_zip

        locate_zip()


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--intervention", "interventions", multiple=True, help="none | direction | set:PROMPT_INDEX | set:joint | latents:LAYER=I,J[:ablate|scale=S|clamp=V] (repeatable; the baseline 'none' always runs). Default: none and direction.")
@click.option("--prompts", help="Harmful prompts: any file `cache` reads (.json, .jsonl, .csv, .tsv, .txt). Default: the study's held-out harmful prompts.")
@click.option("--prompt-column", help="CSV column / JSON key of the prompts.")
@click.option("--category-column", help="CSV column with each prompt's category (default: category or SemanticCategory).")
@click.option("--max-prompts", type=int, help="Use the first N harmful prompts.")
@click.option("--harmless", help="Harmless prompts for induced refusal and CE/KL. Default: the study's held-out harmless prompts.")
@click.option("--max-harmless", type=int, help="Use the first N harmless prompts.")
@click.option("--xstest", help="XSTest prompts CSV (its safe rows) for over-refusal, e.g. xstest_prompts.csv.")
@click.option("--max-xstest", type=int, help="Use the first N safe XSTest prompts.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Generation stops at the end of the turn or after N tokens.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts per batched generation (1 = one at a time).")
@click.option("--judges", "judge_names", default="substring,phrase,semantic", show_default=True, help="Judges to run.")
@click.option("--induce-clamp", type=float, help="For set: interventions: clamp the set's latents to this value on harmless prompts (induced refusal).")
@click.option("--sweep", help="Clamp-value × set-size grid of induced refusal, e.g. 10,20,30x1,2,4 (needs a set: or latents: intervention).")
@click.option("--sweep-prompts", type=int, default=16, show_default=True, help="Harmless prompts per sweep cell.")
@click.option("--sweep-tokens", type=int, default=48, show_default=True, help="Tokens generated per sweep prompt.")
@click.option("--run", default="default", show_default=True, help="Analysis run: where the direction and greedy sets are read and the evaluation is written.")
@click.option("--overwrite", is_flag=True, help="Replace a stored evaluation made with other options.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_errors
def evaluate_command(
    study: Path, interventions: tuple[str, ...], judge_names: str, sweep: str | None, run: str, overwrite: bool, device: str, as_json: bool,
    **options: Any,
) -> None:
    """Benchmark interventions as the papers report them: refusal rate and attack success per
    category by three judges (with 95% Wilson intervals and their agreement), induced refusal
    on harmless prompts, XSTest over-refusal, and the KL / CE cost on the model's own harmless
    completions. Resumable: every batch is stored under /analysis/RUN/evaluate.

    \b
      refusal-explorer evaluate study.h5 --intervention direction --intervention set:joint \\
          --prompts harmbench_behaviors_text_test.csv --max-prompts 100 --xstest xstest_prompts.csv
    """
    from explorer.benchmark import EvaluateConfig, Evaluation
    from explorer.benchmark_interventions import parse_interventions, sae_layers_needed
    from store import Study

    judges = tuple(j.strip() for j in judge_names.split(",") if j.strip())
    values, sizes = parse_sweep(sweep)
    config = EvaluateConfig(
        interventions=interventions or ("none", "direction"), judges=judges, sweep_values=values, sweep_sizes=sizes, **options,
    )
    _check_semantic(judges)
    with Study(study) as opened:
        from explorer.benchmark import load_prompt_sets

        load_prompt_sets(opened, config)  # bad prompt files fail here, before the model loads
        layers = sae_layers_needed(parse_interventions(list(config.interventions)), opened, run)
        live = _live(opened, device, layers)
    summary = Evaluation(study, live, config, run=run, overwrite=overwrite, progress=not as_json).run()
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        click.echo(format_summary(summary, list(judges)))
        click.echo(f"\nsaved      {study}:/analysis/{run}/evaluate (every generation and verdict)")


@click.command("judge", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--prompt-column", required=True, help="Column holding the request.")
@click.option("--response-column", required=True, help="Column holding the response to judge.")
@click.option("--json", "as_json", is_flag=True, help='Print {"verdicts": [{"substring", "phrase", "semantic"}, …]} in row order (true = refusal).')
@one_line_errors("nothing was judged")
def judge_command(pairs: Path, prompt_column: str, response_column: str, as_json: bool) -> None:
    """Judge (request, response) pairs from a CSV/TSV with the three refusal judges, so another
    model's outputs are scored by the same rules as `evaluate`."""
    from explorer.judges import JUDGES, judge_file, read_pairs

    read_pairs(pairs, prompt_column, response_column)  # a bad file fails before the model loads
    _check_semantic(JUDGES)
    rows = judge_file(pairs, prompt_column, response_column)
    if as_json:
        click.echo(json.dumps({"verdicts": [{j: r[j] for j in JUDGES} for r in rows]}))
        return
    for i, row in enumerate(rows):
        marks = "  ".join(f"{j} {'REFUSAL' if row[j] else 'answer '}" for j in JUDGES)
        why = "; ".join(f"{j}: {row['evidence'][j]}" for j in JUDGES if row["evidence"][j])
        click.echo(f"{i:>4}  {marks}" + (f"  ({why})" if why else ""))
    totals = "  ".join(f"{j} {sum(r[j] for r in rows)}/{len(rows)}" for j in JUDGES)
    click.echo(f"refusals  {totals}")


@click.command("refusal-tokens", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--min-share", type=float, default=0.8, show_default=True, help="A token joins the set if at least this share of the generations it opens are refusals.")
@click.option("--min-count", type=int, default=2, show_default=True, help="… and it opens at least this many refusals.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@one_line_errors("nothing was written for this stage")
def refusal_tokens_command(study: Path, min_share: float, min_count: int, batch_size: int, device: str) -> None:
    """Find the model's own refusal opening tokens (e.g. "\\n\\n" before "I'm sorry") from the
    study's cached generations, store them, and use them for the fast score from now on
    (studies cached with explicit --refusal-tokens keep theirs)."""
    from explorer.refusal_tokens import run_refusal_tokens
    from store import Study

    if not 0 < min_share <= 1 or min_count < 1:
        raise InputError("--min-share must be in (0, 1] and --min-count ≥ 1")
    with Study(study) as opened:
        if opened.meta.config.get("refusal_tokens"):
            raise InputError(f"this study was cached with --refusal-tokens {','.join(opened.meta.config['refusal_tokens'])}; those stay in force")
        live = _live(opened, device, [])
        result, summary = run_refusal_tokens(opened, live, min_share=min_share, min_count=min_count, batch_size=batch_size)
    result.save(study, "default", config={"min_share": min_share, "min_count": min_count})
    shown = ", ".join(f"{t!r} ({r} refusals, {a} answers)" for t, r, a in summary["tokens"])
    rejected = ", ".join(f"{t!r} ({r}/{a})" for t, r, a in summary["rejected"][:5]) or "none"
    click.echo(
        f"openers    {shown}\n"
        f"left out   {rejected} (open answers too often)\n"
        f"fast score vs generation ({summary['generated']} generated prompts, {summary['refused_by_generation']} refused, threshold {summary['threshold']:+.2f}):\n"
        f"           {summary['disagreements_before']} disagreements with {', '.join(map(repr, summary['old_tokens']))} -> "
        f"{summary['disagreements_after']} with the model's own openers\n"
        f"saved      {study}:/analysis/default/refusal_tokens (the live fast score uses it from now on)"
    )
