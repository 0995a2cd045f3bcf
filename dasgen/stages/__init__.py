"""Pipeline stages: one plain function per DVC stage, called by the CLI, by dvc.yaml (through the CLI) and by tests.

Each stage reads a :class:`~dasgen.config.Config`, works inside a :class:`~dasgen.pipeline.workspace.Workspace`
(the directory tree of one pipeline run) and writes its outputs atomically, so a killed stage re-run resumes.
"""
