"""The benchmarks a user runs: `python -m benchmarks.compare_article`, `.speedrun`, `.parity`; `.results` makes the tables."""
