"""Benchmarks: `make bench` (run.py with peers.py and workloads.py), faults.py, memory.py."""
