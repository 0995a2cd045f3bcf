"""Exports of a finished domain as a standalone dataset: :func:`~dasgen.export.run.export_domain` (the entry point,
:data:`~dasgen.export.run.FORMATS`), the shared building blocks (:mod:`~dasgen.export.parts`), one module per format
(:mod:`~dasgen.export.cityscapes`, :mod:`~dasgen.export.parquet`, :mod:`~dasgen.export.hdf5`), the dataset card and
manifest (:mod:`~dasgen.export.card`, with :mod:`~dasgen.export.citations` and :mod:`~dasgen.export.redact`: what
it credits, and no local path in what it publishes) and the journal that lets a rerun after a kill remove only what
the export wrote (:mod:`~dasgen.export.journal`).
"""

from dasgen.export.run import FORMATS, export_domain

__all__ = ["FORMATS", "export_domain"]
