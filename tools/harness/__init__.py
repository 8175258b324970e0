"""The experiment suite that tools/suite.py runs: its experiments (registry.py), the training
arms and evaluations they read (design.py), running those resumably (plan.py), and the
results.json, tables, plots and README block made from the evaluation reports (summaries.py,
tables.py, figures.py, results.py).

Imports go one way: paths, design, tables, figures <- summaries <- registry <- plan <- results
<- tools/suite.py (design, summaries and registry name the plan's Settings in annotations
only). tools/ is on sys.path when a tool runs; tests and experiment scripts add it.
"""
