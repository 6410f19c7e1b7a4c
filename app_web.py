"""Refusal Explorer's web demo (Gradio): the study's views with plots, plus a live panel.

    python app_web.py STUDY.h5 [--live] [--host 127.0.0.1] [--port 7860] [--share]

``build_app`` wires the callbacks of ``refusal_web`` (plain functions, tested without a server)
to widgets; ``serve`` opens the study and serves it on loopback unless told otherwise. A public
share link is made only with ``--share``. Nothing is opened or computed at import time.
``command`` is the ``refusal-explorer web`` command (the CLI shell imports it by name,
ARCHITECTURE §3); ``main`` runs that same command on its own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import click
import gradio as gr

from explorer.browse import FEATURE_COLUMNS
from explorer.filters import FEATURES, PROMPTS
from explorer.cli.options import ConfigOptions
from explorer.cli.output import one_line_errors
from explorer.cli.shell import CONTEXT, run_standalone
from refusal_web import analyses, dashboard, plots, prompts, views
from refusal_web.context import WebContext, make_context
from refusal_web import steering
from refusal_web.links import Send, Target, open_in
from refusal_web.live import LiveLimits, LiveModel, open_live_model
from refusal_web.live_tab import LIVE_QUEUE, live_tab
from refusal_web.search_now import search_now
from refusal_web.evaluation import evaluation_tab
from refusal_web.paper2 import paper2_tabs
from refusal_web.render import CSS
from store import InputError, Study

__all__ = ["LiveModel", "build_app", "command", "launch_options", "main", "serve"]

BROWSE_CONCURRENCY = 4
"""Browsing callbacks served at once; live generation runs one request at a time."""


def _first_cell(event: gr.SelectData) -> Any:
    """The first column of the clicked row: the id the table lists (latent, prompt, set)."""
    return event.row_value[0] if event.row_value else gr.skip()


def _row_index(event: gr.SelectData) -> Any:
    """The clicked row's position (the sets table: a search without a set has no set id)."""
    return event.index[0] if event.index is not None else gr.skip()


def _colour_by_clicked_latent(event: gr.SelectData) -> tuple[Any, str]:
    """A click in the prompt's latent table: colour the tokens by that latent."""
    return (event.row_value[0], "latent") if event.row_value else (gr.skip(), gr.skip())


def _features_tab(ctx: WebContext, sends: list[Send] | None) -> Target:
    layer = ctx.layer
    sort = "cosine" if ctx.candidates is not None else "freq_diff"
    page, status, _ = views.feature_page(ctx, layer, "", sort, True, 1)
    first = int(page["latent"].iloc[0]) if len(page) else 0
    detail = views.feature_view(ctx, layer, first)
    with gr.Row():
        layers = gr.Dropdown(list(ctx.layers), value=layer, label="Layer", visible=len(ctx.layers) > 1, scale=1)
        query = gr.Textbox(label="Filter", placeholder="e.g. 101   cosine>0.2   dormant   minimal   fm", scale=4,
                           elem_id="feature-query")
        sort_by = gr.Dropdown(list(FEATURE_COLUMNS), value=sort, label="Sort by", scale=2)
        descending = gr.Checkbox(value=True, label="Descending", scale=1)
        page_no = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1)
    status_md = gr.Markdown(status, elem_id="feature-status")
    with gr.Accordion("Columns and filter syntax", open=False):
        gr.Markdown(FEATURES.legend_markdown(), elem_id="feature-legend")
    table = gr.Dataframe(page, interactive=False, max_height=420, elem_id="feature-table", label="Latents (click a row)")
    with gr.Row():
        latent = gr.Number(value=first, label="Latent", precision=0, minimum=0, elem_id="feature-latent")
        show = gr.Button("Show latent", elem_id="feature-show")
        to_live = gr.Button("Send to Live", elem_id="feature-to-live", visible=sends is not None)
        export = gr.Button("Export matching rows (CSV)")
        export_file = gr.File(label="CSV", interactive=False, height=90, elem_id="feature-csv")
    head = gr.Markdown(detail[0], elem_id="feature-head")
    with gr.Row():
        with gr.Column(scale=3):
            examples = gr.HTML(detail[1], elem_id="feature-examples", label="Top prompts per label and per activation quantile")
            with gr.Row():
                text_query = gr.Textbox(label="Search the prompts where this latent fires", placeholder="words in the prompt",
                                        scale=4, elem_id="feature-text-query")
                text_search = gr.Button("Search", scale=1, elem_id="feature-text-search")
            found = gr.HTML(elem_id="feature-text-found")
        with gr.Column(scale=2):
            histogram = gr.Plot(detail[2], label="Activation histogram by label (camera icon: PNG)", elem_id="feature-histogram")
            lens = gr.Markdown(detail[3], elem_id="feature-lens")
            partners = gr.Dataframe(detail[4], interactive=False, label="FM partners", max_height=260)
    search_inputs, page_outputs = [layers, query, sort_by, descending], [table, status_md, page_no]
    query.submit(partial(views.feature_search, ctx), search_inputs, page_outputs, api_name="feature_search")
    for trigger in (sort_by.change, descending.change, layers.change):
        trigger(partial(views.feature_search, ctx), search_inputs, page_outputs)
    page_no.submit(partial(views.feature_page, ctx), [*search_inputs, page_no], page_outputs, api_name="feature_page")
    detail_outputs = [head, examples, histogram, lens, partners]
    show.click(partial(views.feature_view, ctx), [layers, latent], detail_outputs, api_name="feature_detail")
    latent.submit(partial(views.feature_view, ctx), [layers, latent], detail_outputs)
    table.select(_first_cell, None, latent).then(partial(views.feature_view, ctx), [layers, latent], detail_outputs)
    partners.select(_first_cell, None, latent).then(partial(views.feature_view, ctx), [layers, latent], detail_outputs)
    export.click(partial(views.feature_csv, ctx), search_inputs, export_file)
    for trigger in (text_query.submit, text_search.click):
        trigger(partial(dashboard.search_prompts, ctx), [layers, latent, text_query], found)
    latent.change(lambda: "", None, found)  # search results belong to the latent they were found for
    if sends is not None:
        sends.append((to_live.click, steering.latent_to_live, [layers, latent]))
    return Target("features", {"layer": layers, "latent": latent}, partial(views.feature_view, ctx), [layers, latent], detail_outputs)


def _prompts_tab(ctx: WebContext, sends: list[Send] | None, model: LiveModel | None) -> Target:
    page, status, _ = prompts.prompt_page(ctx, "", "all", 1)
    labels = ["all", *sorted(set(ctx.study.labels.tolist()))]
    colour_modes = list(prompts.COLOUR_MODES) if ctx.candidates is not None else ["latent"]
    first = analyses.first_flipping_set(ctx)
    start_latent = int(ctx.greedy.latents_of(first)[0]) if ctx.greedy is not None and first is not None else 0
    start_prompt = int(ctx.greedy.prompt[first]) if ctx.greedy is not None and first is not None else 0
    shown = prompts.prompt_explore(ctx, start_prompt, ctx.layer, "latent", start_latent)
    with gr.Row():
        query = gr.Textbox(label="Filter (words search the text)", placeholder="e.g. refused   refusal_score>1   bomb",
                           scale=4, elem_id="prompt-query")
        label = gr.Dropdown(labels, value="all", label="Label", scale=1)
        page_no = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1)
    status_md = gr.Markdown(status, elem_id="prompt-status")
    with gr.Accordion("Columns and filter syntax", open=False):
        gr.Markdown(PROMPTS.legend_markdown(), elem_id="prompt-legend")
    table = gr.Dataframe(page, interactive=False, max_height=300, elem_id="prompt-table", label="Prompts (click a row)")
    with gr.Row():
        index = gr.Number(value=start_prompt, label="Prompt", precision=0, minimum=0, elem_id="prompt-index")
        layers = gr.Dropdown(list(ctx.layers), value=ctx.layer, label="Layer", visible=len(ctx.layers) > 1)
        colour = gr.Radio(colour_modes, value="latent", label="Colour tokens by")
        latent = gr.Number(value=start_latent, label="Latent", precision=0, minimum=0, elem_id="prompt-latent")
        show = gr.Button("Show prompt", elem_id="prompt-show")
        to_live = gr.Button("Send to Live", elem_id="prompt-to-live", visible=sends is not None)
    tokens = gr.HighlightedText(shown[0], label="Tokens", show_legend=False, elem_id="prompt-tokens")
    with gr.Row():
        with gr.Column(scale=3):
            facts = gr.Markdown(shown[1], elem_id="prompt-facts")
            generations = gr.Markdown(shown[2], elem_id="prompt-generations")
        with gr.Column(scale=2):
            top = gr.Dataframe(shown[3], interactive=False, max_height=380, elem_id="prompt-top-latents",
                               label="Why: latents ranked by attribution to this prompt's refusal (click to colour)")
    why = gr.Markdown(shown[4], elem_id="prompt-why")
    with gr.Row(visible=model is not None):
        search = gr.Button("Search now: greedy minimal set for this prompt (saved into the study)", scale=1,
                           elem_id="prompt-search-now")
        search_status = gr.Markdown(elem_id="prompt-search-status")
    page_outputs = [table, status_md, page_no]
    query.submit(partial(prompts.prompt_search, ctx), [query, label], page_outputs, api_name="prompt_search")
    label.change(partial(prompts.prompt_search, ctx), [query, label], page_outputs)
    page_no.submit(partial(prompts.prompt_page, ctx), [query, label, page_no], page_outputs, api_name="prompt_page")
    view_inputs, view_outputs = [index, layers, colour, latent], [tokens, facts, generations, top, why]
    explore = partial(prompts.prompt_explore, ctx)
    show.click(explore, view_inputs, view_outputs, api_name="prompt")
    for trigger in (index.submit, latent.submit, colour.input):
        trigger(explore, view_inputs, view_outputs)
    table.select(_first_cell, None, index).then(explore, view_inputs, view_outputs)
    top.select(_colour_by_clicked_latent, None, [latent, colour]).then(explore, view_inputs, view_outputs)
    if sends is not None:
        sends.append((to_live.click, partial(steering.prompt_to_live, ctx), [index]))
    if model is not None:
        def run_search(prompt: object, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[str]:
            yield from search_now(ctx, model, prompt)

        search.click(run_search, index, search_status, concurrency_limit=1, concurrency_id=LIVE_QUEUE,
                     api_name="search_now").then(explore, view_inputs, view_outputs)
    return Target("prompts", {"prompt": index, "layer": layers, "latent": latent, "colour": colour}, explore, view_inputs, view_outputs)


def _sets_tab(ctx: WebContext, sends: list[Send] | None) -> None:
    text, frame = analyses.minimal_sets(ctx)
    first = analyses.first_flipping_set(ctx) or 0  # open on a set that flips
    figure, steps, about = analyses.trajectory(ctx, first) if ctx.greedy is not None else (None, None, "")
    gr.Markdown(text, elem_id="sets-summary")
    if ctx.greedy is None:
        return
    sets = gr.Dataframe(frame, interactive=False, label="Minimal sets (click a row)", max_height=300)
    with gr.Row():
        chosen = gr.Number(value=first, label="Set", precision=0, minimum=0, elem_id="sets-chosen")
        to_live = gr.Button("Send to Live", elem_id="sets-to-live", visible=sends is not None)
        export = gr.Button("Export sets (CSV)")
        export_steps = gr.Button("Export trajectory (CSV)")
        export_file = gr.File(label="CSV", interactive=False, height=90)
    plot = gr.Plot(figure, label="Refusal score vs number of ablated latents (camera icon: PNG)")
    about_md = gr.Markdown(about)
    steps_table = gr.Dataframe(steps, interactive=False, label="Greedy steps", max_height=300)
    outputs = [plot, steps_table, about_md]
    chosen.submit(partial(analyses.trajectory, ctx), chosen, outputs, api_name="trajectory")
    sets.select(_row_index, None, chosen).then(partial(analyses.trajectory, ctx), chosen, outputs)
    export.click(partial(views.write_csv, ctx, "minimal-sets"), sets, export_file)
    export_steps.click(partial(views.write_csv, ctx, "trajectory"), steps_table, export_file)
    if sends is not None:
        sends.append((to_live.click, partial(steering.set_to_live, ctx), [chosen]))


def _fm_tab(ctx: WebContext) -> None:
    text, figure, pairs, weights = analyses.fm_interactions(ctx)
    gr.Markdown(text, elem_id="fm-summary")
    if ctx.fm is None:
        return
    if figure is not None:  # only when the FM beats the additive model
        gr.Plot(figure, label="Interaction heatmap (camera icon: PNG)")
    with gr.Row():
        pair_table = gr.Dataframe(pairs, interactive=False, label="Verified pairs: FM vs measured", max_height=400)
        weight_table = gr.Dataframe(weights, interactive=False, label="Per-latent weights", max_height=400)
    with gr.Row():
        export_pairs = gr.Button("Export pairs (CSV)")
        export_weights = gr.Button("Export weights (CSV)")
        export_file = gr.File(label="CSV", interactive=False, height=90)
    export_pairs.click(partial(views.write_csv, ctx, "fm-pairs"), pair_table, export_file)
    export_weights.click(partial(views.write_csv, ctx, "fm-weights"), weight_table, export_file)


def _dormant_tab(ctx: WebContext, tabs: gr.Tabs, features: Target | None, prompts_target: Target | None) -> None:
    text, frame = analyses.dormant_latents(ctx)
    gr.Markdown(text, elem_id="dormant-summary")
    if ctx.dormant is None:
        return
    table = gr.Dataframe(frame, interactive=False, label="Woken latents and their causal tests, per prompt (click a row)",
                         max_height=400, elem_id="dormant-table")
    first = analyses.dormant_card(ctx, frame.iloc[0].tolist()) if len(frame) else ("", None, None)
    card = gr.Markdown(first[0], elem_id="dormant-card")
    chosen_latent, chosen_prompt = gr.State(first[1]), gr.State(first[2])
    with gr.Row():
        open_latent = gr.Button("Open this latent in Features", elem_id="dormant-open-latent", visible=features is not None)
        open_prompt = gr.Button("Open this prompt in Prompts", elem_id="dormant-open-prompt", visible=prompts_target is not None)
        export = gr.Button("Export (CSV)")
        export_file = gr.File(label="CSV", interactive=False, height=90)

    def pick(event: gr.SelectData) -> tuple[str, int | None, int | None]:
        return analyses.dormant_card(ctx, event.row_value)

    table.select(pick, None, [card, chosen_latent, chosen_prompt])
    layer = int(ctx.dormant.layer[0]) if len(ctx.dormant.layer) else ctx.layer
    if features is not None:
        open_in(tabs, open_latent.click, features,
                lambda latent: None if latent is None else {"latent": latent, "layer": layer}, [chosen_latent])
    if prompts_target is not None:
        open_in(tabs, open_prompt.click, prompts_target,
                lambda p, latent: None if p is None else {"prompt": p, "latent": latent, "colour": "latent"},
                [chosen_prompt, chosen_latent])
    export.click(partial(views.write_csv, ctx, "dormant"), table, export_file)


def build_app(study: Study, live_model: LiveModel | None = None, *, run: str = "default",
              limits: LiveLimits | None = None) -> gr.Blocks:
    """The web app for an open study (queued; launch it with ``launch_options``)."""
    ctx = make_context(study, run)
    ctx.searchable = hasattr(live_model, "search_into_study")
    plots.warm_up()
    overview_text, direction_plot = views.overview(ctx)
    with gr.Blocks(title=f"Refusal Explorer · {study.path.name}", analytics_enabled=False) as demo:
        gr.Markdown(f"# Refusal Explorer · {study.meta.model_id} · `{study.path.name}`")
        features = prompt_target = None
        sends: list[Send] | None = [] if live_model is not None else None  # "send to Live" buttons, wired below
        with gr.Tabs() as tabs:
            with gr.Tab("Overview", id="overview"):
                gr.Markdown(overview_text + ("" if live_model else "\n\n*Live panel off: serve with `--live`.*"),
                            elem_id="overview-text")
                if direction_plot is not None:
                    gr.Plot(direction_plot, label="Direction candidates (camera icon: PNG)")
            with gr.Tab("Features", id="features"):
                if ctx.layers:
                    features = _features_tab(ctx, sends)
                else:
                    gr.Markdown("*This study has no SAE codes: cache them with `refusal-explorer cache --sae LAYER=…`.*")
            with gr.Tab("Prompts", id="prompts"):
                if ctx.layers:
                    prompt_target = _prompts_tab(ctx, sends, live_model)
                else:
                    gr.Markdown("*This study has no SAE codes: cache them with `refusal-explorer cache --sae LAYER=…`.*")
            with gr.Tab("Minimal sets", id="sets"):
                _sets_tab(ctx, sends)
            with gr.Tab("Interactions", id="fm"):
                _fm_tab(ctx)
            with gr.Tab("Dormant latents", id="dormant"):
                _dormant_tab(ctx, tabs, features, prompt_target)
            paper2_tabs(ctx)  # Graph, Categories, Jailbreak, Probe
            evaluation_tab(ctx)  # refusal_web/evaluation.py
            if live_model is not None:
                with gr.Tab("Live", id="live"):
                    live = live_tab(ctx, live_model, limits or LiveLimits())
                for trigger, values, inputs in sends or []:
                    open_in(tabs, trigger, live, values, inputs)
    demo.queue(default_concurrency_limit=BROWSE_CONCURRENCY, max_size=64)
    return demo


def launch_options(*, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: loopback, no share link, no SSR, system fonts."""
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return {"server_name": host, "server_port": port, "share": share, "ssr_mode": False, "inbrowser": False,
            "show_error": True, "theme": theme, "css": CSS, "footer_links": []}


def serve(path: Path, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, live: bool = False,
          run: str = "default", limits: LiveLimits | None = None) -> None:
    """Open the study and serve the app until interrupted. Bad input raises ``InputError``."""
    if not 0 <= port <= 65535:
        raise InputError(f"port {port} is not a valid TCP port (0–65535)")
    limits = limits or LiveLimits()
    study = Study(path)
    try:
        runs = study.analysis_runs()
        if runs and run not in runs:
            raise InputError(f"{path}: no analysis run {run!r} (runs: {', '.join(runs)}); pick one with --run")
        model = open_live_model(study, run) if live else None
        demo = build_app(study, model, run=run, limits=limits)
        try:
            _, local_url, share_url = demo.launch(prevent_thread_lock=True, quiet=True,
                                                  **launch_options(host=host, port=port, share=share))
        except OSError as error:
            raise InputError(f"cannot serve on {host}:{port}: the port is in use or the address is not available; "
                             "choose another --port or --host") from error
        print(f"Refusal Explorer: serving {path} at {local_url}" + (f" and {share_url}" if share_url else ""), flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        demo.block_thread()  # returns on Ctrl+C, after closing the server
    finally:
        study.close()


LIMIT_OPTIONS = ConfigOptions(LiveLimits, skip=("max_latents", "max_abs_value"))


@click.command("web", context_settings=CONTEXT)
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback only by default).")
@click.option("--port", type=int, default=7860, show_default=True, help="TCP port.")
@click.option("--share", is_flag=True, help="Also make a public gradio.live link (off by default).")
@click.option("--live", is_flag=True, help="Load the study's model and SAEs for the live editing panel.")
@click.option("--run", "run_name", default="default", show_default=True, help="Analysis run to show.")
@LIMIT_OPTIONS.decorate
@one_line_errors("the server stopped")
def command(study: Path, host: str, port: int, share: bool, live: bool, run_name: str, **limits: object) -> None:
    """Serve the web demo of a study file.

    An interactive server prints no summary, so it has no --json.
    """
    serve(study, host=host, port=port, share=share, live=live, run=run_name, limits=LIMIT_OPTIONS.build(limits))


def main(argv: list[str] | None = None) -> int:
    return run_standalone(command, argv, "refusal-explorer web")


if __name__ == "__main__":
    sys.exit(main())
