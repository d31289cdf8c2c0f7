"""fngate's benchmark suite: `make bench` (or `python -m bench`). See docs/benchmarks.md."""
