"""A real worker process spoken to directly over its channel, as its agent would:
batches, skips, the running marker, and the one-task messages of a 0.1.0 agent
(which spoke to its workers over an ipc ROUTER)."""

from __future__ import annotations

import os
import select
import subprocess

import pytest
import zmq
from helpers import PY, ROOT, wait_for

from agents import channel
from agents.marker import IDLE, Marker
from cluster.contract import payload, wire


class AgentEnd:
    """The agent's side of one worker's socketpair."""

    def __init__(self, ours):
        self.ch = channel.Channel(ours, 0)
        self.waiting: list = []

    def send(self, msg: wire.Message) -> None:
        assert self.ch.send(msg.encode())
        while self.ch.pending:  # large messages: wait for the worker to take them
            select.select([], [self.ch], [], 10)
            self.ch.flush()

    def recv(self) -> wire.Message:
        while not self.waiting:
            assert select.select([self.ch], [], [], 10)[0], "the worker did not answer within 10 s"
            self.waiting += self.ch.receive()
        return wire.decode(self.waiting.pop(0))


def _spawn(tmp_path, target: str):
    """A worker as this agent starts it ("pair"), or as the previous release did: an
    ipc endpoint, and its marker in a file."""
    ours, theirs = channel.pair()
    if target == "pair":
        marker = Marker.create()
        args, fds = [f"fd:{theirs.fileno()}", f"fd:{marker.fd}"], (theirs.fileno(), marker.fd)
    else:
        path = tmp_path / "marker"
        path.write_bytes(bytes(8))
        marker = Marker.attach(str(path))
        args, fds = [target, str(path)], ()
    proc = subprocess.Popen(
        [PY, "-m", "agents.worker", args[0], "0", str(os.getpid()), args[1]],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        pass_fds=fds,
    )
    theirs.close()
    return proc, ours, marker


@pytest.fixture
def worker(tmp_path):
    proc, ours, marker = _spawn(tmp_path, "pair")
    end = AgentEnd(ours)
    ready = end.recv()
    assert isinstance(ready, wire.WorkerReady) and ready.pid == proc.pid
    try:
        yield end, marker
    finally:
        proc.kill()
        proc.wait()
        marker.close()
        end.ch.close()


def test_a_batch_runs_in_order_and_comes_back_in_one_message(worker):
    end, marker = worker
    args = [payload.pack_args((i,)) for i in range(5)]
    end.send(
        wire.RunTasks(
            "j", "d1", {}, [[i, 1, 100 + i] for i in range(5)], frames=(payload.pack_callable(lambda x: x * 10), *args)
        )
    )
    done = end.recv()
    assert isinstance(done, wire.TasksDone)
    assert done.items == [["j", i, 1, wire.OK] for i in range(5)]
    assert [payload.load_result(b, payload.RESULT_PICKLE) for b in done.frames] == [0, 10, 20, 30, 40]
    assert marker.get() == IDLE  # 0 between tasks: a death now is nobody's fault


def test_the_marker_names_the_running_task_and_skipped_tasks_never_run(worker, tmp_path):
    end, marker = worker
    gate = tmp_path / "gate"

    def wait_for_gate(i, gate=str(gate)):
        import os
        import time

        while i == 0 and not os.path.exists(gate):
            time.sleep(0.01)
        return i

    args = [payload.pack_args((i,)) for i in range(3)]
    end.send(
        wire.RunTasks(
            "j", "d2", {}, [[i, 1, 7 + i] for i in range(3)], frames=(payload.pack_callable(wait_for_gate), *args)
        )
    )
    wait_for(lambda: marker.get() == 7, 10, what="the worker to mark task 0 (seq 7) as running")
    end.send(wire.SkipTasks([8]))  # task 1 moves elsewhere before it starts
    gate.write_text("go")
    items = []
    while len(items) < 2:
        items += end.recv().items
    assert [row[1] for row in items] == [0, 2]


def test_a_one_task_message_of_a_0_1_0_agent_gets_a_one_task_answer(worker):
    end, _ = worker
    end.send(wire.RunTask("j", 3, 2, "d3", {}, frames=(payload.pack_callable(lambda x: -x), payload.pack_args((4,)))))
    done = end.recv()
    assert isinstance(done, wire.TaskDone) and (done.job_id, done.index, done.attempt, done.status) == (
        "j",
        3,
        2,
        wire.OK,
    )
    assert payload.load_result(done.frames[0], payload.RESULT_PICKLE) == -4


def test_a_tasks_output_comes_before_its_result_and_a_quiet_task_sends_none(worker):
    end, _ = worker

    def talk(x):
        import sys

        if x:
            print("to stdout")
            print("to stderr", file=sys.stderr)
        return x

    end.send(
        wire.RunTasks(
            "j",
            "d4",
            {},
            [[0, 1, 1], [1, 1, 2]],
            frames=(payload.pack_callable(talk), *map(payload.pack_args, [(1,), (0,)])),
        )
    )
    said, results = [], []
    while len(results) < 2:
        said.append(end.recv())
        results += said[-1].items if isinstance(said[-1], wire.TasksDone) else []
    first_result = next(n for n, m in enumerate(said) if isinstance(m, wire.TasksDone))
    outputs = [m for m in said if isinstance(m, wire.TaskOutput)]
    assert said[:first_result] == outputs  # all of it before the result
    assert {(m.job_id, m.index, m.attempt) for m in outputs} == {("j", 0, 1)}
    assert {m.stream: bytes(m.frames[0]) for m in outputs} == {"out": b"to stdout\n", "err": b"to stderr\n"}
    assert results == [["j", 0, 1, wire.OK], ["j", 1, 1, wire.OK]]


def test_a_function_it_does_not_have_is_asked_for_again(worker):
    end, _ = worker
    end.send(wire.RunTasks("j", "never-sent", {}, [[0, 1, 1]], frames=(b"", payload.pack_args((1,)))))
    assert end.recv().items == [["j", 0, 1, wire.NEED_FUNCTION]]


def test_a_megabyte_goes_through_and_back_whole(worker):
    end, _ = worker
    blob = os.urandom(3 << 20)  # larger than one read and than the socket's buffer: partial writes on both sides
    end.send(
        wire.RunTasks(
            "j", "d4", {}, [[0, 1, 1]], frames=(payload.pack_callable(lambda b: b[::-1]), payload.pack_args((blob,)))
        )
    )
    done = end.recv()
    assert done.items == [["j", 0, 1, wire.OK]]
    assert payload.load_result(done.frames[0], payload.RESULT_PICKLE) == blob[::-1]


def test_the_worker_leaves_when_the_agent_closes_its_end(tmp_path):
    proc, ours, marker = _spawn(tmp_path, "pair")
    try:
        AgentEnd(ours).recv()  # ready
        ours.close()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        marker.close()


def test_a_worker_started_by_an_older_agent_speaks_over_its_ipc_socket_and_marks_its_file(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/w"
    sock.bind(endpoint)
    proc, ours, marker = _spawn(tmp_path, endpoint)
    try:
        assert sock.poll(10_000)
        identity, *frames = sock.recv_multipart()
        assert isinstance(wire.decode(frames), wire.WorkerReady)
        sock.send_multipart(
            [
                identity,
                *wire.RunTask(
                    "j", 1, 1, "d5", {}, frames=(payload.pack_callable(lambda x: x + 1), payload.pack_args((41,)))
                ).encode(),
            ]
        )
        assert sock.poll(10_000)
        _, *frames = sock.recv_multipart()
        done = wire.decode(frames)
        assert isinstance(done, wire.TaskDone) and payload.load_result(done.frames[0], payload.RESULT_PICKLE) == 42

        def nap(i):
            import time

            time.sleep(2)
            return i

        sock.send_multipart(
            [
                identity,
                *wire.RunTasks(
                    "j", "d6", {}, [[0, 1, 77]], frames=(payload.pack_callable(nap), payload.pack_args((0,)))
                ).encode(),
            ]
        )
        wait_for(lambda: marker.get() == 77, 10, what="the worker to mark its task in the marker file")
    finally:
        proc.kill()
        proc.wait()
        ours.close()
        marker.close()
        sock.close(0)
        ctx.term()
