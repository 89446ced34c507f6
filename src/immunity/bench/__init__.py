"""Benchmarks: our way against the naive way, measured in one run."""

DEFAULT_SEED = 20261126
"""Seed of the generated judge scenarios (the date the set was first fixed)."""
