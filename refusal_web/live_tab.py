"""The Live tab's widgets: prompt, per-latent edits, the baseline / edited generations side by
side, and the strength sweep. The callbacks are ``refusal_web.live.live_generate`` and
``refusal_web.steering.live_sweep``; both run one request at a time on the model.

``live_tab`` returns the tab's ``Target`` so the Sets, Features and Prompts tabs can send a set,
a latent or a prompt to it (``refusal_web.links``).
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from refusal_web.context import WebContext
from refusal_web.links import Target
from refusal_web.live import MODES, LiveLimits, LiveModel, live_generate
from refusal_web.steering import live_sweep

LIVE_QUEUE = "live-model"
"""One concurrency id for every call that runs the model, so they never overlap."""


def live_tab(ctx: WebContext, model: LiveModel, limits: LiveLimits) -> Target:
    gr.Markdown(f"Type a prompt (or send one from the Sets, Features or Prompts tab), choose latents to edit (or "
                f"project out the refusal direction), and compare the baseline with the edited model. Give one latent "
                f"its own value with `id=value` (e.g. `3, 17=8, 42=-2`); the others take the Value field. Prompts up to "
                f"{limits.max_prompt_chars} characters; requests are queued and served one at a time.")
    prompt = gr.Textbox(label="Prompt", lines=3, max_length=limits.max_prompt_chars, elem_id="live-prompt")
    with gr.Row():
        layer = gr.Dropdown(list(ctx.layers), value=ctx.layer, label="Layer")
        latents = gr.Textbox(label="Latent ids (id or id=value)", placeholder="e.g. 3, 17=8, 42", elem_id="live-latents")
        mode = gr.Radio(list(MODES), value="ablate", label="Edit", elem_id="live-mode")
        value = gr.Number(value=0.0, label="Value (scale factor / clamp level)", elem_id="live-value")
    with gr.Row():
        direction = gr.Checkbox(value=False, label="Also project out the refusal direction",
                                interactive=ctx.direction is not None)
        tokens = gr.Slider(1, limits.max_new_tokens, value=min(32, limits.max_new_tokens), step=1, label="New tokens")
        generate = gr.Button("Generate", variant="primary", elem_id="live-go")
    status = gr.Markdown(elem_id="live-status")
    with gr.Row():
        baseline = gr.Textbox(label="Baseline", lines=8, interactive=False, elem_id="live-baseline")
        edited = gr.Textbox(label="Edited", lines=8, interactive=False, elem_id="live-edited")
    with gr.Accordion("Strength sweep: refusal score vs the edited latents' value", open=False):
        with gr.Row():
            sweep_values = gr.Textbox(value="0:8:9", label="Values (0, 5, 10 or from:to:points)", scale=3,
                                      elem_id="live-sweep-values")
            sweep = gr.Button("Sweep (scale or clamp)", scale=1, elem_id="live-sweep")
        sweep_status = gr.Markdown(elem_id="live-sweep-status")
        sweep_plot = gr.Plot(label="Strength sweep (camera icon: PNG)", elem_id="live-sweep-plot")
    generate.click(partial(live_generate, model, ctx.study, limits, ctx.run),
                   [prompt, layer, latents, mode, value, direction, tokens], [baseline, edited, status],
                   concurrency_limit=1, concurrency_id=LIVE_QUEUE, api_name="generate")
    sweep.click(partial(live_sweep, model, ctx.study, limits, ctx.run),
                [prompt, layer, latents, mode, sweep_values, direction], [sweep_plot, sweep_status],
                concurrency_limit=1, concurrency_id=LIVE_QUEUE, api_name="sweep")
    return Target("live", {"prompt": prompt, "layer": layer, "latents": latents, "mode": mode})
