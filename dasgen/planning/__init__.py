"""``dasgen plan``: the PTL schedule in work units (:mod:`~dasgen.planning.plan`), the cost model with its
measured unit costs (:mod:`~dasgen.planning.costs`, ``unit_costs.json``) and the rendered report
(:mod:`~dasgen.planning.report`).
"""
