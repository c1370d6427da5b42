"""Benchmarks, reproduction grids and reports (run as `python -m benchmark.<name>`)."""
