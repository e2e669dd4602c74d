"""Benchmarks, run on demand (not in CI). See bench/README.md; `make bench` runs bench.proxy."""
