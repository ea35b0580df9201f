"""Benchmarks, run from a source tree as `python -m bench.NAME` (never shipped): `make bench`
(run.py with peers.py and workloads.py), faults.py, hop.py, timeline.py, zmq_floor.py,
memory.py, and `make scale` (scale/, with its simulated fleet)."""
