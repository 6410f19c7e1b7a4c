"""The shell every command and analysis stage is registered on (ARCHITECTURE §3).

``cli`` is the ``refusal-explorer`` group, ``analyze`` its stage group. ``@command`` registers a
top-level command, ``@stage`` an analysis stage; both add ``--json`` and one-line errors.
``STAGES`` keeps the stages in registration (= pipeline) order for the demo. The viewers
(``tui``, ``web``) live above this layer, so the shell names them (module:attribute) and
imports them only when they are invoked.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from explorer.cli.options import ConfigOptions, OptionsCommand
from explorer.cli.output import emit, json_option, one_line_errors
from store.errors import InputError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

VIEWERS: dict[str, tuple[str, str]] = {
    "tui": ("app_tui:command", "Browse a study file in the terminal (works over SSH; no model needed)."),
    "web": ("app_web:command", "Serve the web demo of a study file."),
}
"""Commands defined by the viewers (the layer above): name → (module:attribute, short help)."""


# click ≥ 8.2 raises this for a group called without a command; older releases print the help
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Root(click.Group):
    """The root group: viewer commands are imported on first use, so ``--help`` stays instant,
    and a usage mistake (unknown option, bad value) is one ``error:`` line with exit status 2,
    like every other bad input, instead of click's usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as error:  # a bare group: its help, as click shows it
            error.show()
            sys.exit(error.exit_code)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else (prog_name or "refusal-explorer")
            click.echo(f"error: {error.format_message()} (see {where} --help)", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *VIEWERS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in VIEWERS:
            module, attribute = VIEWERS[name][0].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.commands[name].get_short_help_str(80)) for name in super().list_commands(ctx)]
        rows += [(name, help_) for name, (_, help_) in VIEWERS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=_Root, context_settings=CONTEXT)
def cli() -> None:
    """Refusal Explorer: find the SAE latents that make a chat model refuse.

    \b
    Typical flow:
      refusal-explorer demo                    # everything on the embedded default model
      refusal-explorer cache --harmful H.json --harmless S.json --layers 12 --out study.h5
      refusal-explorer info study.h5
    """


class _InOrder(click.Group):
    """Lists its commands in registration order (for ``analyze``: the pipeline's order)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@cli.group("analyze", cls=_InOrder, context_settings=CONTEXT)
def analyze() -> None:
    """The analysis stages, each reading the study and writing /analysis/RUN/STAGE into it.

    \b
      refusal-explorer analyze direction STUDY.h5
      refusal-explorer analyze candidates STUDY.h5 --layer 12
      refusal-explorer analyze greedy STUDY.h5 --k 32 --order ascending
    """


def command(
    name: str, *, interrupted: str = "nothing was written", options: ConfigOptions | None = None, options_at: int = 0,
) -> Callable[[Callable[..., Any]], click.Command]:
    """Register a top-level command with ``--json`` and one-line errors; ``options`` adds a
    config's generated options after the first ``options_at`` declared parameters."""

    def register(function: Callable[..., Any]) -> click.Command:
        wrapped = json_option(one_line_errors(interrupted)(function))
        wrapped.__click_params__.insert(0, wrapped.__click_params__.pop())  # type: ignore[attr-defined]  # --json last
        if options is None:
            return cli.command(name)(wrapped)
        return cli.command(name, cls=OptionsCommand, config_options=options, insert_at=options_at)(wrapped)

    return register


def run_standalone(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run one command as its own program (``python app_web.py ...``); returns the exit status."""
    try:
        command.main(argv, prog_name=prog_name, standalone_mode=False)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        return 130
    return 0


# --- analysis stages -----------------------------------------------------------------------


def open_stage_live(study: Any, device: str, sae_layers: list[int]) -> Any:
    """The study's model and SAEs; the one seam the tests replace with tiny models."""
    from explorer.live import open_live

    return open_live(study, device=device, sae_layers=sae_layers)


@dataclass
class Report:
    """What a stage function hands back: the result to save and what to print.

    ``facts`` is everything the text says (``--json`` prints it); ``text`` is written from
    ``facts`` alone. ``saved_config`` adds provenance to the stored config."""

    result: Any
    config: Any
    facts: dict[str, Any]
    text: str
    saved_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """One stage invocation: the open study, the run, and the options not yet consumed."""

    name: str
    path: Path
    study: Any
    run: str
    device: str
    options: ConfigOptions
    values: dict[str, Any]

    def config(self, **fixed: Any) -> Any:
        """The stage's config from its options (``fixed`` fills the skipped fields)."""
        return self.options.build(self.values, **fixed)

    def live(self, sae_layers: Sequence[int]) -> Any:
        return open_stage_live(self.study, self.device, list(sae_layers))

    def require(self, result_class: Any, stage: str, what: str | None = None) -> Any:
        """An earlier stage's result in this run, or a one-line error naming the command to run."""
        result = result_class.load(self.study, self.run)
        if result is None:
            raise InputError(f"no {what or stage} in run {self.run!r} yet; run `refusal-explorer analyze {stage} {self.path}` first")
        return result

    def candidates_sae_layer(self, layer: int | None) -> int:
        """``layer`` checked like ``sae_layer``; None = the layer ``analyze candidates`` ranked
        (then the first layer with codes), so per-latent stages follow the candidates."""
        if layer is None:
            from explorer.results import CandidateResult

            candidates = CandidateResult.load(self.study, self.run)
            layer = candidates.layer if candidates is not None else None
        return self.sae_layer(layer)

    def sae_layer(self, layer: int | None) -> int:
        """``layer`` checked to have SAE codes, or the first layer that has them."""
        study = self.study
        if layer is None:
            with_codes = [layer for layer in study.meta.layers if study.has_codes(layer)]
            if not with_codes:
                raise InputError("this study has no SAE codes; re-cache it with `refusal-explorer cache --sae LAYER=…`")
            return with_codes[0]
        with_codes = [cached for cached in study.meta.layers if study.has_codes(cached)]
        if layer not in study.meta.layers:
            raise InputError(f"layer {layer} is not cached in this study (cached: {', '.join(map(str, study.meta.layers))}; "
                             f"with SAE codes: {', '.join(map(str, with_codes)) or 'none'})")
        if not study.has_codes(layer):
            raise InputError(f"layer {layer} has no SAE codes in this study (with codes: {', '.join(map(str, with_codes)) or 'none'}); "
                             f"re-cache it with `refusal-explorer cache --layers ... --sae {layer}=…`")
        return layer


@dataclass(frozen=True)
class Stage:
    name: str
    command: click.Command
    demo: tuple[str, ...] | None
    """Options the demo runs this stage with (small budgets); None = not part of the demo."""
    group: str
    """The study group (/analysis/RUN/GROUP) whose presence means the stage is done."""
    needs_sae: bool = True
    """Whether the stage reads SAE codes; a demo of a model without SAEs runs only the others."""


STAGES: list[Stage] = []
"""Every registered stage, in registration order (= pipeline order; the demo runs them so)."""


def stage(
    name: str, options: ConfigOptions, *, model: bool = True, extra: Sequence[Callable[[Any], Any]] = (),
    demo: Sequence[str] | None = None, group: str | None = None, needs_sae: bool = True,
) -> Callable[[Callable[[StageContext], Report]], click.Command]:
    """Register ``refusal-explorer analyze NAME STUDY.h5``.

    The command gets: the STUDY argument, ``--run``, one option per config field (``options``),
    the ``extra`` click options, ``--device`` when the stage loads the ``model``, and ``--json``.
    The decorated function receives a ``StageContext`` with the study open for reading and
    returns a ``Report``; the shell then saves the result under /analysis/RUN/NAME (with its
    config) and prints the text or the JSON facts. Its docstring is the command's help."""

    def register(function: Callable[[StageContext], Report]) -> click.Command:
        def run_stage(study: Path, run: str, as_json: bool, device: str = "cpu", **values: Any) -> None:
            from store import Study
            from store.lock import study_lock

            with Study(study) as opened:
                pass  # a missing or damaged study is refused before the lock file is made beside it
            # One writer per study (store.lock), held from before the model loads until the save:
            # a second writer is refused now, not after the work.
            with study_lock(study, f"analyze {name}"):
                with Study(study) as opened:
                    report = function(StageContext(name, study, opened, run, device, options, values))
                report.result.save(study, run, config=asdict(report.config) | report.saved_config)
            saved = f"{study}:/analysis/{run}/{name}"
            facts = {"stage": name, "study": str(study), "run": run, **report.facts, "saved": saved}
            emit(facts, f"{report.text}\nsaved      {saved}", as_json=as_json)

        run_stage.__doc__ = function.__doc__
        decorated: Callable[..., Any] = one_line_errors("nothing was written for this stage")(run_stage)
        decorated = json_option(decorated)
        if model:
            decorated = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(decorated)
        for option in reversed(extra):
            decorated = option(decorated)
        decorated = click.option("--run", default="default", show_default=True,
                                 help="Analysis run name (results go to /analysis/RUN).")(decorated)
        decorated = click.argument("study", type=click.Path(path_type=Path))(decorated)
        registered = analyze.command(name, cls=OptionsCommand, config_options=options, insert_at=2)(decorated)
        STAGES.append(Stage(name, registered, None if demo is None else tuple(demo), group or name, needs_sae))
        return registered

    return register
