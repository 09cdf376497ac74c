"""The seeded ablation study (`lio study`): the paper's arms x seeds as DVC experiments,
aggregated into reports/study.json and reports/study.md. Not a pipeline stage: it drives
`dvc exp run` and reads what the runs recorded.

presets.py (what runs), runs.py (queueing and reading experiments), aggregate.py (paired
statistics and the choice of the default), report.py (study.json and study.md).
"""
