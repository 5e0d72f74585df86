"""The benchmark harness: `python bench/run.py [--quick]` (see bench/run.py)."""
