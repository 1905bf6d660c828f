"""The recipes a user runs, one per paper: ``python -m reprokit.recipes.<name>`` (``_grpo`` is what the GRPO ones
share)."""
