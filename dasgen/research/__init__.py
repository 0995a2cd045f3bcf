"""Research tooling on top of the stages: the paper's ablations (:mod:`~dasgen.research.ablate`, its spec
:mod:`~dasgen.research.ablate_spec` and reports :mod:`~dasgen.research.ablate_report`), contact sheets
(:mod:`~dasgen.research.sheet`) and charts (:mod:`~dasgen.research.plots`).
"""
