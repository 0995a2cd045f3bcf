"""Pipeline stages: one plain function per DVC stage, called by the CLI, by dvc.yaml (through the CLI) and by tests.

One module per stage, named after its command: :mod:`~dasgen.stages.toy`, :mod:`~dasgen.stages.scan`,
:mod:`~dasgen.stages.train_diffusion`, :mod:`~dasgen.stages.train_g0`, :mod:`~dasgen.stages.translate` (the PTL
domains), :mod:`~dasgen.stages.summarize` and :mod:`~dasgen.stages.export`. A stage imports the shared plumbing of
:mod:`dasgen.pipeline`, never another stage's module.

Each stage reads a :class:`~dasgen.config.Config`, works inside a :class:`~dasgen.pipeline.workspace.Workspace`
(the directory tree of one pipeline run) and writes its outputs atomically, so a killed stage re-run resumes.
"""
