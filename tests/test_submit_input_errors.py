"""`clusterctl submit`'s inputs that cannot be right are one line naming where, exit 2; and
after Ctrl-C the summary is the last thing it draws."""

from __future__ import annotations

import re
import signal
import subprocess

from helpers import PY, ROOT


def test_a_range_that_ends_before_it_starts_is_a_usage_error(local_cluster):
    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "5", "0")
    assert res.returncode == 2
    assert res.stderr.strip() == "clusterctl: --range 5 0: B must not be less than A (the inputs are A..B-1)"
    assert res.stdout == ""


def test_an_inputs_line_that_is_not_utf8_is_named(local_cluster, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'1\n"\xc3\xa9t\xc3\xa9"\n"ab\xed"\n4\n')  # line 2 is UTF-8, line 3 is not
    res = local_cluster.clusterctl("submit", "math:sqrt", "--inputs", str(data))
    assert res.returncode == 2
    assert res.stderr.strip() == "clusterctl: --inputs line 3: not UTF-8 text (byte 0xed at character 4)"
    # The same from stdin.
    piped = subprocess.run(
        [PY, "-m", "cluster.cli.main", "submit", "--shell", "--inputs", "-", "--", "echo"],
        input=data.read_bytes(),
        capture_output=True,
        timeout=60,
        env=local_cluster.env,
        cwd=ROOT,
    )
    assert piped.returncode == 2
    assert piped.stderr.decode().strip() == "clusterctl: --inputs line 3: not UTF-8 text (byte 0xed at character 4)"


def test_after_ctrl_c_the_summary_is_the_last_thing_drawn(running_cluster, tmp_path):
    data = tmp_path / "sleeps.jsonl"
    data.write_text("0.3\n" * 200)
    with running_cluster.clusterctl_running("submit", "time:sleep", "--inputs", str(data), "--progress") as submit:
        running_cluster.wait_status(lambda s: s["running"] > 0, what="the job's tasks to run")
        submit.send_signal(signal.SIGINT)
        _, err = submit.communicate(timeout=60)
    assert submit.returncode == 130, err
    drawn = [part for part in re.split(r"[\r\n]", err) if part.strip()]
    assert drawn[-1].startswith("clusterctl: cancelled after "), drawn[-3:]
    assert any(part.startswith("[") for part in drawn)  # the bar was drawn, before the summary
