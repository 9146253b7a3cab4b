"""The recipe search: the cheapest variant of a model that passes the gate, certified on items the
search never saw. `python -m pipelines.search` (pipelines/search/__main__.py); per-layer sensitivity
in sensitivity.py, candidate recipes in candidates.py, the split in split.py, the decision procedure
in procedure.py, the pipeline wiring in runner.py."""
