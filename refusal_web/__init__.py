"""The Gradio web demo's pieces, kept out of ``app_web.py`` so each stays small.

``views`` and ``live`` hold the callbacks: plain functions that take and return values and
never touch Gradio objects, so they are unit-tested without a server. ``plots`` and ``render``
turn the view models into Plotly figures and HTML; ``app_web.build_app`` wires them to widgets.
Nothing here imports the study at import time.
"""
