"""CLI commands that are not DVC stages and need more than a few lines: :mod:`~dasgen.commands.evaluate` (score a
segmenter checkpoint on a labelled target set)."""
