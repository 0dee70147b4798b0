"""Benchmarks: run them as scripts (``python benchmarks/bench_rr.py``) or modules."""
