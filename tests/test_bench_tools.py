"""The measuring tools of bench/ that make no comparison of their own still run end to
end and measure what they say (their figures are in docs/; here only their shape)."""

from __future__ import annotations

import json
import subprocess

from helpers import PY, ROOT


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_timeline_follows_one_task_through_every_process_in_order():
    res = _run("-m", "bench.timeline", "--round-trips", "60", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["round_trips"] == 60 and out["in_sequence"] >= 30
    steps = [(who, what) for who, what, _ in out["steps"]]
    assert steps == [
        ("client", "submit() returned"),
        ("coordinator", "received SubmitTasks"),
        ("coordinator", "sent Dispatch"),
        ("agent", "received Dispatch"),
        ("agent", "sent RunTasks"),
        ("worker", "received RunTasks"),
        ("worker", "sent TasksDone"),
        ("agent", "received TasksDone"),
        ("agent", "sent Results"),
        ("coordinator", "received Results"),
        ("coordinator", "sent TaskResults"),
        ("client", "result() returned"),
    ]
    times = [at for _, _, at in out["steps"]]
    assert times == sorted(times) and times[0] > 0


def test_hop_measures_each_transport_and_the_w3_path():
    res = _run("-m", "bench.hop", "--round-trips", "200", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert set(rows) == {"socketpair", "zmq ipc", "zmq tcp", "W3 path", "W3 direct"}
    assert all(r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"] for r in rows.values())


def test_zmq_floor_answers_every_peer_and_reports_memory_per_peer_twice():
    res = _run("-m", "bench.zmq_floor", "--peers", "50", "--rounds", "2", "--steady-rounds", "20", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["heartbeats_answered"] == 50 * 20 and out["all_answered"]
    assert out["first"]["rounds"] == 2 and out["steady"]["rounds"] == 20
    assert out["first"]["kib_per_peer"] > 0 and out["steady"]["kib_per_peer"] > 0
