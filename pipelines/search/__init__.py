"""Recipe search (python -m pipelines.search): sensitivity, candidates."""
