"""The pieces behind ``experiments/tables.py``, one job per module.

- ``specs``: the tables (which experiment preset, which paper table) and the ablation settings;
- ``scan``: what a table is made from: finished run folders (``results.json`` + ``config.json``),
  which run fills which row, and the CSVs an earlier rendering wrote;
- ``stats``: per-seed values, mean ± std over seeds, paired differences and how numbers are printed;
- ``render``: the markdown and CSV tables, for the paper tables and for the ablation;
- ``launch``: the Hydra multiruns that produce a table's runs.

The modules import ``paper_tables`` (the paper's numbers) as a top-level module, so ``experiments/``
must be on ``sys.path``; ``experiments/tables.py`` puts it there. Nothing in ``mpdistil/`` imports this.
"""
