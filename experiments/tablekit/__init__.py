"""The pieces behind ``experiments/tables.py``, one job per module.

- ``specs``: the tables (which experiment preset, which paper table) and the ablation settings;
- ``scan``: what a table is made from: finished run folders (``results.json`` + ``config.json``),
  which run fills which row, and the files an earlier rendering wrote;
- ``predictions``: the per-example dev predictions behind a table's cells, from runs' ``predictions.json``
  into one compact ``<table>_predictions.json``, and back;
- ``bootstrap``: the paired bootstrap over dev examples behind every ``*``, ``beats`` and ``tie``;
- ``stats``: per-seed values, mean ± std over seeds, paired comparisons, the majority-class baseline
  and how numbers are printed;
- ``render``: the markdown and CSV tables, for the paper tables and for the ablation;
- ``launch``: the Hydra multiruns that produce a table's runs;
- ``grid``, ``study``, ``study_plots``: the generalisation-vs-fidelity study of ``experiments/paradox.py``: its
  grids as multiruns, and its correlations, per-level means, paired student-vs-teacher intervals and figures.

The modules import ``paper_tables`` (the paper's numbers) as a top-level module, so ``experiments/``
must be on ``sys.path``; ``experiments/tables.py`` and ``experiments/paradox.py`` put it there. Nothing in
``mpdistil/`` imports this.
"""
