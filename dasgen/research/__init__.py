"""Research tooling on top of the stages: the paper's ablations (:mod:`~dasgen.research.ablate`, its spec
:mod:`~dasgen.research.ablate_spec` and reports :mod:`~dasgen.research.ablate_report`), contact sheets
(:mod:`~dasgen.research.sheet`), charts (:mod:`~dasgen.research.plots`), and what the experiment scripts in
``bench/experiments/`` share (:mod:`~dasgen.research.experiments`: they use public names only).
"""
