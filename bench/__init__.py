"""Benchmarks for mim-engine: kernel microbenchmarks, the traffic counter, end-to-end latency."""
