"""The sandbox's customers: the open-loop load generator of `immunity.impact.load`.

One generator measures the sandbox (`immunity sandbox load`), any URL (`--url`) and a real
deployment's public address (the `impact` block): it lives in `immunity.impact`, below the
engine, and is re-exported here for the sandbox and its tests.
"""

from immunity.impact.load import LoadSummary, percentile, read_records, run_load, summarize

__all__ = ["LoadSummary", "percentile", "read_records", "run_load", "summarize"]
