"""The terminal viewer of a study file (Textual). Entry point: ``app_tui.run``.

Reads the study file only (no model, no GPU, no network). The screens are thin: what they show
comes from ``explorer.browse`` through ``refusal_tui.data.StudyData``, read in thread workers.
"""
