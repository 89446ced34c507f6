"""`immunity bench logtail` measures what it says: every line parsed, ours and naive agree."""

from __future__ import annotations

from immunity.bench.logtail import run


def test_bench_logtail_parses_every_line_and_both_ways_count_the_same() -> None:
    """A small run: all lines are requests, none unparsed, and the 1 s look agrees."""
    result = run(seconds=3, rps=300, servers=2)
    for r in result["results"]:
        assert (r["parsed_requests"], r["unparsed"]) == (900, 0)
        assert r["look_counts_agree"] is True
