"""One module per analysis stage: its options, how it runs from the CLI, and its summary.

Each module registers its stage with ``@stage`` (explorer/cli/shell.py); explorer/cli/__init__.py
imports them in pipeline order (ARCHITECTURE §5).
"""
