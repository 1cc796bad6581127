"""nyxplug benchmarks: a pytest-benchmark suite and ``compare.py`` (one side-by-side table)."""
