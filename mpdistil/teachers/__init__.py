"""Which teacher to distil from: ``python -m mpdistil.teachers audit task=<task> teachers=[<candidate>, ...]``.

Each candidate is fine-tuned by the project's own phase 1 (or taken from its cache), measured (task metrics,
calibration, out-of-domain accuracy, capacity, and how easily a student follows it after a short fixed
distillation), and the candidates are ranked under a declared weighting (:mod:`mpdistil.teachers.ranking`).
"""
