"""`clusterctl submit` end to end: real ZooKeeper, coordinator, two agents."""

from __future__ import annotations

import json
import math
import time

from helpers import wait_for


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_range_gives_every_result_once_and_exit_0(running_cluster):
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "500")
    assert res.returncode == 0, res.stderr
    out = rows(res.stdout)
    assert sorted(r["index"] for r in out) == list(range(500))
    for r in out:
        assert r["ok"] is True and r["result"] == math.sqrt(r["index"])
    assert "500 tasks, 0 failed" in res.stderr


def test_inputs_from_stdin_ordered_with_a_failing_task_exits_1(running_cluster):
    res = running_cluster.clusterctl("submit", "math:sqrt", "--inputs", "-", "--ordered", input='4\n"x"\n\n9\n')
    assert res.returncode == 1, res.stderr
    out = rows(res.stdout)
    assert [r["index"] for r in out] == [0, 1, 2]
    assert out[0] == {"index": 0, "ok": True, "result": 2.0}
    assert out[1]["ok"] is False and out[1]["error"].startswith("TypeError:")
    assert "Traceback" in out[1]["traceback"]
    assert out[2]["result"] == 3.0


def test_bad_json_line_is_rejected_before_anything_runs(running_cluster, tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "touch.py"
    script.write_text(f"def f(x):\n    open({str(marker)!r}, 'a').write('x')\n    return x\n")
    res = running_cluster.clusterctl("submit", f"{script}:f", "--inputs", "-", input="1\n2\n{oops\n3\n")
    assert res.returncode == 2
    assert "line 3" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_star_spreads_arrays_and_output_file(running_cluster, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("[2, 10]\n[3, 2]\n")
    out = tmp_path / "out.jsonl"
    res = running_cluster.clusterctl(
        "submit", "builtins:pow", "--star", "--inputs", str(data), "--ordered", "--output", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert [r["result"] for r in rows(out.read_text())] == [1024, 9]


def test_py_file_source_is_shipped_to_nodes(running_cluster, tmp_path):
    # The file lives where no worker could import it from: its source travels with the job.
    script = tmp_path / "elsewhere" / "jobcode.py"
    script.parent.mkdir()
    script.write_text(
        "import decimal\n\ndef tri(n):\n    return n * (n + 1) // 2\n\ndef odd(n):\n    return decimal.Decimal(n) / 4\n"
    )
    res = running_cluster.clusterctl("submit", f"{script}:tri", "--range", "0", "50", "--ordered")
    assert res.returncode == 0, res.stderr
    assert [r["result"] for r in rows(res.stdout)] == [n * (n + 1) // 2 for n in range(50)]
    # A result JSON cannot carry comes back clearly marked, as its repr.
    res = running_cluster.clusterctl("submit", f"{script}:odd", "--range", "1", "2")
    assert rows(res.stdout) == [{"index": 0, "ok": True, "repr": "Decimal('0.25')"}]


def test_usage_errors_exit_2_with_one_line(running_cluster, tmp_path):
    script = tmp_path / "m.py"
    script.write_text("def f(x):\n    return x\n")
    cases = [
        ("submit", "nocolon", "--range", "0", "3"),
        ("submit", f"{script}:missing", "--range", "0", "3"),
        ("submit", str(tmp_path / "absent.py") + ":f", "--range", "0", "3"),
        ("submit", "math:sqrt"),  # no inputs
        ("submit", "math:sqrt", "--inputs", str(tmp_path / "absent.jsonl")),
    ]
    for args in cases:
        res = running_cluster.clusterctl(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr.strip(), args


def test_module_or_function_missing_on_workers_stops_the_job_with_one_clear_line(running_cluster):
    res = running_cluster.clusterctl("submit", "no_such_module_xyz:f", "--range", "0", "3")
    assert res.returncode == 2
    assert res.stdout == ""  # no task ran, so none has a result
    last = res.stderr.strip().splitlines()[-1]
    assert "cannot start: no_such_module_xyz:f — ModuleNotFoundError: No module named 'no_such_module_xyz'" in last
    res = running_cluster.clusterctl("submit", "math:no_such_function", "--range", "0", "2")
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .endswith("AttributeError: module 'math' has no function 'no_such_function' (on a1, a2)")
    )


def test_a_missing_keys_directory_is_one_clear_line(running_cluster, tmp_path):
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "2", "--keys", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert (
        res.stderr.strip() == f"clusterctl: keys directory {tmp_path / 'nope'} does not exist "
        "(create one with `clusterctl keys generate`)"
    )


def test_shell_mode_quotes_input_and_reports_exit_codes(running_cluster):
    lines = "hello world\nit's $HOME\nfail\n"
    res = running_cluster.clusterctl(
        "submit", "--shell", "--inputs", "-", "--ordered", "--", "test {} != fail && printf '%s' {}", input=lines
    )
    assert res.returncode == 1, res.stderr
    out = rows(res.stdout)
    assert out[0]["result"] == {"exit": 0, "stdout": "hello world", "stderr": ""}
    assert out[1]["result"]["stdout"] == "it's $HOME"  # quoted: no expansion, no injection
    assert out[2]["ok"] is False and out[2]["result"]["exit"] == 1
    assert out[2]["error"] == "CommandFailed: exit status 1"


def test_unreachable_zookeeper_exits_2_within_the_timeout(local_cluster, free_port):
    env = dict(local_cluster.env, CLUSTER_ZK=f"127.0.0.1:{free_port}")
    started = time.monotonic()
    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3", "--connect-timeout", "2", env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("clusterctl: cannot reach ZooKeeper") and res.stderr.count("\n") == 1, res.stderr
    assert time.monotonic() - started < 30  # it gives up rather than hanging


def test_no_coordinator_exits_2_with_a_hint(local_cluster):
    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3", "--connect-timeout", "1")
    assert res.returncode == 2
    assert "no coordinator is running" in res.stderr


def test_a_cluster_without_agents_waits_with_a_message_then_gives_up(local_cluster):
    coordinator = local_cluster.coordinator()
    wait_for(lambda: local_cluster.leader() is not None, 20, what="a leader")
    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3", "--wait-workers", "2")
    assert res.returncode == 2
    assert "no workers in cluster" in res.stderr and "no agent joined cluster" in res.stderr
    assert "Traceback" not in res.stderr and coordinator.popen.poll() is None
