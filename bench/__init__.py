"""Benchmarks (`python cli.py bench NAME`): each measures side by side in one run, prints a
markdown section and writes it into BENCHMARKS.md between its markers."""
