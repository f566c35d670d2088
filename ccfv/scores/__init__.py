"""The ``score`` rule: every metric of ``scoring.metrics`` on one features file.

- :mod:`ccfv.scores.scoring`: the metric definitions of the config, checked; one (target, model) scored.
- :mod:`ccfv.scores.views`: what each metric reads of a features file.
- :mod:`ccfv.scores.metrics`: the metrics themselves, one module per family.
"""
