"""The results stage (rules/results.smk): tables, statistics, the ground-truth check, figures, costs, provenance.

- :mod:`ccfv.results.tables` (rule ``tables``): the paper's Tables 1 and 2 and the numbers behind them.
- :mod:`ccfv.results.paper`: the paper's published values, ours beside them.
- :mod:`ccfv.results.measures`: agreement of a ranking with the Dice (tau, Pearson, Rel@1, ...), bootstrap.
- :mod:`ccfv.results.static_rankers`: rankings without features, the bar a metric must clear.
- :mod:`ccfv.results.statistics` (rule ``statistics``): intervals, p-values, regret, selection, stability.
- :mod:`ccfv.results.ground_truth` (rule ``ground_truth``): can each target's Dice rank its models?
- :mod:`ccfv.results.figures` (rules ``figures``, ``feature_tsne``).
- :mod:`ccfv.results.costs` (rule ``costs``), :mod:`ccfv.results.provenance` (rule ``provenance``).
- :mod:`ccfv.results.formatting`: table cells and the ground-truth flag, for every table.
- :mod:`ccfv.results.console`: ``ccfv report``, the tables in the terminal.
"""
