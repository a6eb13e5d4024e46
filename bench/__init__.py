"""The benchmark harness: `export-worker bench` (see BENCHMARKS.md)."""
