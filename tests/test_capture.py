"""agents/capture.py: what a task's stdout and stderr become, chunk by chunk; the
descriptors themselves are redirected in a process of their own (never pytest's)."""

from __future__ import annotations

import json
import subprocess
import textwrap

from helpers import PY, ROOT

from agents.capture import CHUNK, KEEP, LIVE_DELAY, Stream, marker


def test_whole_lines_go_live_after_the_delay_and_a_partial_line_waits():
    s = Stream("out")
    s.take(b"one\ntwo\nthr", 10.0)
    assert s.live(10.0) == []  # not yet: neither 4 KiB nor the delay
    assert s.due() == 10.0 + LIVE_DELAY
    chunks = s.live(10.0 + LIVE_DELAY)
    assert chunks == [b"one\ntwo\n"]
    s.consume(chunks)
    assert s.due() is None  # "thr" is part of a line: it waits for its end, or the task's
    s.take(b"ee", 11.0)
    assert s.live(20.0) == []
    assert s.final() == [b"three"]


def test_a_chunk_of_lines_goes_at_once_and_never_splits_a_line():
    s = Stream("out")
    line = b"x" * 99 + b"\n"
    s.take(line * 100, 0.0)  # 10,000 bytes
    chunks = s.live(0.0)
    assert all(len(c) <= CHUNK and c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == line * 100


def test_a_line_longer_than_a_chunk_is_cut_at_the_chunk_size():
    s = Stream("err")
    s.take(b"y" * (CHUNK * 2 + 10), 0.0)
    chunks = s.live(0.0)
    assert chunks == [b"y" * CHUNK, b"y" * CHUNK]
    s.consume(chunks)
    assert s.final() == [b"y" * 10]


def test_beyond_the_head_bytes_are_counted_and_named_by_a_marker_line():
    s = Stream("out")
    s.take(b"a" * (KEEP - 1) + b"\n", 0.0)
    s.take(b"b" * 1000, 0.0)
    out = b"".join(s.final())
    assert out == b"a" * (KEEP - 1) + b"\n" + marker(1000)
    s.reset()
    s.take(b"c" * (KEEP + 5), 0.0)  # the head ends mid-line: the marker starts a line of its own
    assert b"".join(s.final()) == b"c" * KEEP + b"\n[clusterd: 5 more bytes not kept]\n"
    s.reset()
    assert s.final() == [] and s.kept == 0


SCRIPT = textwrap.dedent(
    """
    import json, logging, os, subprocess, sys, time
    from agents.capture import Capture

    live = []
    cap = Capture(lambda msgs: live.extend(msgs) or True)
    cap.log_to_diagnostics("agents")
    print("between tasks: dropped", flush=True)
    while cap._drainer.poll(0):  # the reader thread has it (written in the instant before a task, it joins it)
        time.sleep(0.01)
    cap.begin(("j", 1, 0))
    print("hello")
    subprocess.run(["sh", "-c", "echo child; echo child-err >&2"], check=True)
    logging.getLogger("agents.worker").warning("a diagnostic")
    os.write(1, b"z" * 200_000)
    ended = cap.end()
    cap.begin(("j", 2, 0))
    second = cap.end()
    cap.close()
    rows = [[m.index, m.stream, bytes(m.frames[0]).decode()] for m in live + ended]
    print(json.dumps({"rows": rows, "second": len(second)}))
    """
)


def test_a_process_fds_are_captured_per_task_and_its_diagnostics_are_not():
    proc = subprocess.run([PY, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])  # printed after close(): to the real stdout
    assert proc.stdout.count("\n") == 1  # the report alone: the rest was captured
    assert "dropped" not in json.dumps(report)
    assert "a diagnostic" in proc.stderr and "child-err" not in proc.stderr
    out = "".join(text for _, stream, text in report["rows"] if stream == "out")
    err = "".join(text for _, stream, text in report["rows"] if stream == "err")
    assert {index for index, _, _ in report["rows"]} == {1}
    assert out.startswith("hello\nchild\nzzz") and out.endswith(
        f"\n[clusterd: {200_000 + 12 - KEEP} more bytes not kept]\n"
    )
    assert len(out.encode()) == KEEP + len(marker(200_000 + 12 - KEEP)) + 1
    assert err == "child-err\n"
    assert report["second"] == 0  # nothing of the first task's leaks into the next
