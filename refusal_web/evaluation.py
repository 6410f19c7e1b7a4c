"""The Evaluation tab: `evaluate`'s per-intervention, per-category refusal table by three
judges (95% Wilson intervals), their agreement, the clamp × set-size sweep as a heatmap, and
every generation (click a row to read it with each judge's evidence).

``evaluation_view`` and ``generation_card`` are plain callbacks tested without a server;
``evaluation_tab`` wires them into ``build_app``'s tab set.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from explorer.benchmark import load_evaluation
from explorer.benchmark_metrics import format_summary
from refusal_web.context import WebContext

JUDGE_ORDER = ("substring", "phrase", "semantic")


def sweep_figure(summary: dict[str, Any], judge: str) -> go.Figure | None:
    cells = summary.get("sweep") or []
    if not cells:
        return None
    values = sorted({c["value"] for c in cells})
    sizes = sorted({c["size"] for c in cells})
    rate = {(c["value"], c["size"]): c["refusal_rate"].get(judge) for c in cells}
    z = [[rate.get((v, s)) for s in sizes] for v in values]
    latents = (summary.get("sweep_source") or {}).get("latents") or []
    # A column is the set's first k latents: name it by k and the latent id it adds.
    columns = [f"{s} (+{latents[s - 1]})" if s <= len(latents) else str(s) for s in sizes]
    figure = go.Figure(go.Heatmap(z=z, x=columns, y=[f"{v:g}" for v in values], zmin=0, zmax=1, colorscale="Reds",
                                  colorbar={"title": {"text": "refusal rate"}, "tickformat": ".0%"},
                                  text=[[f"{x:.0%}" if x is not None else "" for x in row] for row in z], texttemplate="%{text}"))
    head = f" · set [{', '.join(map(str, latents[:max(sizes)]))}]" if latents else ""
    figure.update_layout(title=f"Induced refusal on harmless prompts ({judge} judge){head}",
                         xaxis_title="set size: first k latents (+ the latent id size k adds)", xaxis_type="category",
                         yaxis_title="clamp value", yaxis_type="category", height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return figure


def evaluation_view(ctx: WebContext) -> tuple[str, go.Figure | None, pd.DataFrame | None]:
    stored = load_evaluation(ctx.study, ctx.run)
    if stored is None:
        run = "" if ctx.run == "default" else f" --run {ctx.run}"
        return f"*No evaluation in run `{ctx.run}` yet: run `refusal-explorer evaluate {ctx.study.path}{run}` to produce it.*", None, None
    arrays = stored["arrays"]
    judges = [j for j in JUDGE_ORDER if f"row_{j}" in arrays]
    summary = stored.get("summary")
    text = ("```\n" + format_summary(summary, judges).strip() + "\n```") if summary else "*Evaluation not finished: run the same `evaluate` command again to continue.*"
    frame = pd.DataFrame({
        "intervention": arrays["row_intervention"], "set": arrays["row_set"], "#": arrays["row_index"], "category": arrays["row_category"],
        **{j: ["refusal" if v else "answer" for v in arrays[f"row_{j}"]] for j in judges},
        "generation": [str(g)[:80].replace("\n", " ") for g in arrays["row_generation"]],
    })
    return text, sweep_figure(summary or {}, judges[-1]), frame


def generation_card(ctx: WebContext, row: int) -> str:
    stored = load_evaluation(ctx.study, ctx.run)
    if stored is None:
        return ""
    a = stored["arrays"]
    judges = [j for j in JUDGE_ORDER if f"row_{j}" in a]
    lines = [f"**{a['row_intervention'][row]}** · {a['row_set'][row]} #{a['row_index'][row]}", f"> {a['row_prompt'][row]}", "",
             "```", str(a["row_generation"][row]), "```"]
    lines += [f"- {j}: **{'refusal' if a[f'row_{j}'][row] else 'answer'}**" + (f" ({a[f'row_{j}_evidence'][row]})" if a[f"row_{j}_evidence"][row] else "")
              for j in judges]
    return "\n".join(lines)


def evaluation_tab(ctx: WebContext) -> None:
    """Add the Evaluation tab (call inside ``gr.Tabs()``)."""
    with gr.Tab("Evaluation", id="evaluation"):
        text, figure, frame = evaluation_view(ctx)
        gr.Markdown(text, elem_id="evaluation-summary")
        if figure is not None:
            gr.Plot(figure, label="Sweep (camera icon: PNG)")
        if frame is not None:
            table = gr.Dataframe(frame, interactive=False, label="Every generation (click a row to read it)", max_height=320)
            card = gr.Markdown(elem_id="evaluation-card")

            def pick(event: gr.SelectData) -> str:
                row = event.index[0] if isinstance(event.index, (list, tuple)) else int(event.index)
                return generation_card(ctx, int(row))

            table.select(pick, None, card)
