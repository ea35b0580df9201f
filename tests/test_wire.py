"""The wire module: every message round-trips, and nothing malformed gets through."""

from __future__ import annotations

import random

import msgpack
import pytest

from cluster.contract import wire
from cluster.contract.version import PROTOCOL_VERSION

SAMPLES = [
    wire.Heartbeat("c1", 3, 2),
    wire.Refused("nope"),
    wire.SubmitJob("job1", "d" * 32, {"retries": 2}, frames=(b"Pfn",)),
    wire.JobAccepted("job1", 100, 4, 7, 1 << 20),
    wire.CancelTasks("job1", [3]),
    wire.StatusRequest(True),
    wire.StatusReply({"epoch": 3, "agents": {}}),
    wire.DropTasks(2, "job1", [1, 2]),
    wire.SubmitTasks("job1", [0, 1], frames=(b"a", b"b")),
    wire.TaskResults("job1", [[0, wire.OK], [1, wire.ERROR]], frames=(b"r0", b"r1")),
    wire.CancelJob("job1"),
    wire.JobFailed("job1", "why"),
    wire.JobFailed("job1", "why", wire.JobFailure.LOAD_FAILED, [["n1", "ImportError", "no x", "Traceback ..."]]),
    wire.LoadFailed("job1", "n1", "AttributeError", "module 'math' has no function 'f'", "Traceback ...", 3),
    wire.LoadFailed("job1", "n1", "ModuleNotFoundError", "No module named 'x'"),
    wire.Hello("c1", 2, 0.5),
    wire.Hello("c1", 2, 0.5, True, True, True),
    wire.Welcome("n1", 2, 2, 4, [["job1", 3, 1]], False),
    wire.JobSpec(2, "job1", "d", {}, frames=(b"fn",)),
    wire.Dispatch(2, "job1", [[3, 1], [4, 1]], frames=(b"x", b"y")),
    wire.Results(2, [["job1", 3, 1, wire.OK]], frames=(b"r",)),
    wire.EndJob(2, "job1"),
    wire.Draining("n1"),
    wire.WorkerReady(0, 1234),
    wire.RunTask("job1", 3, 1, "d", {}, frames=(b"", b"args")),
    wire.RunTasks("job1", "d", {"timeout": 2}, [[3, 1, 17], [4, 1, 18]], frames=(b"fn", b"a3", b"a4")),
    wire.TasksDone([["job1", 3, 1, wire.OK], ["job1", 4, 1, wire.ERROR]], frames=(b"r3", b"e4")),
    wire.TaskDone("job1", 3, 1, wire.LOST, frames=(b"err",)),
    wire.TasksDone([["job1", 3, 1, wire.LOAD_FAILED]], frames=(b"e3",)),
    wire.RelayBeat(2, ["n1", "n2"]),
    wire.RelayBeat(2, [], ["n3"]),
    wire.TaskOutput("job1", 3, 1, "out", frames=(b"a line\n",)),
    wire.TaskOutput("job1", 3, 1, "err", frames=(b"",)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert wire.decode(msg.encode()) == msg


def header(*fields):
    return msgpack.packb([PROTOCOL_VERSION, *fields], use_bin_type=True)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"\xc1garbage"],
        [msgpack.packb({"not": "a list"})],
        [msgpack.packb([PROTOCOL_VERSION])],
        [header(999)],  # unknown kind
        [header("1")],  # kind of the wrong type
        [header(wire.Heartbeat.KIND, "c1")],  # too few fields
        [header(wire.Heartbeat.KIND, 5, 1, 0)],  # wrong type
        [header(wire.Heartbeat.KIND, "c1", True, 0)],  # bool is not an int
        [header(wire.SubmitTasks.KIND, "j", [0, 1]), b"only one frame"],
        [header(wire.SubmitTasks.KIND, "j", ["0"]), b"x"],
        [header(wire.Results.KIND, 1, [["j", 1, 1]]), b"x"],  # short row
        [header(wire.Results.KIND, 1, [[5, 1, 1, 0]]), b"x"],  # job id not a string
        [header(wire.TaskDone.KIND, "j", 1, 1, 99), b"x"],  # unknown status
        [header(wire.TasksDone.KIND, [["j", 1, 1, 99]]), b"x"],  # unknown status
        [header(wire.RunTasks.KIND, "j", "d", {}, [[1, 1, 5]]), b"fn"],  # no arguments frame
        [header(wire.RunTasks.KIND, "j", "d", {}, []), b"fn"],  # no task
        [header(wire.RunTasks.KIND, "j", "d", {}, [[1, 1]]), b"fn", b"a"],  # row without seq
        [header(wire.SubmitJob.KIND, "j", "d", {})],  # no function frame
        [header(wire.Welcome.KIND, "n", 1, 1, 1, [1, 2], False)],  # held rows not lists
        [header(wire.TaskOutput.KIND, "j", 1, 1, "stdout"), b"x"],  # streams are "out" and "err"
        [header(wire.TaskOutput.KIND, "j", 1, 1, "out")],  # no data frame
        [header(wire.TaskOutput.KIND, "j", 1, 1, "out"), b"x", b"y"],  # two
        [header(wire.TaskOutput.KIND, "j", "1", 1, "out"), b"x"],  # index not an int
        [header(wire.LoadFailed.KIND, "j", "n", "ImportError")],  # no message
        [header(wire.LoadFailed.KIND, "j", "n", 5, "m")],  # type not a string
        [header(wire.LoadFailed.KIND, "j", "n", "E", "m", "", "3")],  # epoch not an int
        [header(wire.JobFailed.KIND, "j", "why", 6, [["n", "E", "m"]])],  # short error row
        [header(wire.JobFailed.KIND, "j", "why", 6, [["n", "E", "m", 7]])],  # traceback not a string
        [header(wire.JobFailed.KIND, "j", "why", 6, ["n"])],  # errors rows not lists
    ],
)
def test_malformed_is_a_protocol_error(frames):
    with pytest.raises(wire.ProtocolError):
        wire.decode(frames)


def test_fields_a_newer_peer_appends_are_ignored():
    # A compatible change within a protocol version only appends fields.
    msg = wire.decode([header(wire.Heartbeat.KIND, "c1", 1, 3, 1.25, 7, 0.5, 0.25, "added later", [1, 2])])
    assert msg == wire.Heartbeat("c1", 1, 3, 1.25, 7, 0.5, 0.25)


def test_an_agents_heartbeat_says_its_hosts_load_and_memory_within_range():
    assert wire.decode([header(wire.Heartbeat.KIND, "a1", 1, 3)]).load == -1.0  # an earlier release's: not said
    for load, memory in ((-2.0, 0.5), (0.5, 1.5), (0.5, -0.5)):
        with pytest.raises(wire.ProtocolError, match="out of range"):
            wire.decode([header(wire.Heartbeat.KIND, "a1", 1, 3, 0.0, -1, load, memory)])


def test_the_load_failure_fields_are_optional_for_peers_of_earlier_releases():
    # A coordinator of an earlier release says Hello without takes_load_failures, and fails a job
    # with a reason alone: an agent then fails each task as before, a client reads the reason.
    assert wire.decode([header(wire.Hello.KIND, "c1", 2, 0.5, True, True)]).takes_load_failures is False
    assert wire.decode([header(wire.JobFailed.KIND, "j", "why", 1)]).errors == []


def test_fields_with_defaults_may_be_missing_from_an_older_peer():
    assert wire.decode([header(wire.Heartbeat.KIND, "c1", 1)]) == wire.Heartbeat("c1", 1)
    # A relay of the release before closed connections were reported: nobody lost.
    assert wire.decode([header(wire.RelayBeat.KIND, 2, ["n1"])]) == wire.RelayBeat(2, ["n1"], [])
    with pytest.raises(wire.ProtocolError, match="node ids"):
        wire.decode([header(wire.RelayBeat.KIND, 2, [], [7])])
    # A coordinator of the release before stretched heartbeats: no interval, "unchanged".
    assert wire.decode([header(wire.Heartbeat.KIND, "c1", 1, 0)]).interval == 0


@pytest.mark.parametrize("interval", [-1.0, 0.001, 61, float("nan"), float("inf")])
def test_a_heartbeat_interval_out_of_range_is_refused(interval):
    with pytest.raises(wire.ProtocolError, match="interval"):
        wire.decode([header(wire.Heartbeat.KIND, "c1", 1, 0, interval)])


def test_a_refusal_reads_the_same_in_every_protocol_version():
    """A peer of another version must learn why it was refused, not see a frame it cannot read."""
    frames = [msgpack.packb([PROTOCOL_VERSION + 1, wire.Refused.KIND, "we speak 2", wire.Refusal.PROTOCOL_VERSION])]
    assert wire.decode(frames) == wire.Refused("we speak 2", wire.Refusal.PROTOCOL_VERSION)
    older = [msgpack.packb([PROTOCOL_VERSION, wire.Refused.KIND, "not the leader"])]  # a release before codes
    assert wire.decode(older).code == wire.Refusal.UNSPECIFIED


def test_other_protocol_version_is_named():
    frames = [msgpack.packb([PROTOCOL_VERSION + 1, wire.Heartbeat.KIND, "c", 1, 0])]
    with pytest.raises(wire.ProtocolVersionMismatch, match=f"version {PROTOCOL_VERSION + 1}"):
        wire.decode(frames)


def test_random_garbage_never_escapes_as_another_exception():
    rng = random.Random(1234)
    valid = [m.encode() for m in SAMPLES]
    for _ in range(20_000):
        if rng.random() < 0.5:
            frames = [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(0, 4))]
        else:  # mutate a valid message: flip bytes, truncate, drop or add frames
            frames = list(rng.choice(valid))
            head = bytearray(frames[0])
            for _ in range(rng.randint(1, 3)):
                head[rng.randrange(len(head))] = rng.randrange(256)
            frames[0] = bytes(head[: rng.randint(1, len(head))])
            if rng.random() < 0.3:
                frames.append(b"extra")
        try:
            wire.decode(frames)
        except wire.ProtocolError:
            pass


def test_returned_tasks_and_the_hello_that_allows_them():
    msg = wire.ReturnTasks(3, [["j", 1, 2], ["j", 5, 1]], 6)
    assert wire.decode(msg.encode()) == msg
    assert wire.decode(wire.Hello("c", 1, 0.5, takes_back=True).encode()).takes_back is True
    # A Hello of a coordinator that does not know ReturnTasks: the agent keeps what it is sent.
    assert wire.decode([header(wire.Hello.KIND, "c", 1, 0.5)]).takes_back is False
    for bad in ([["j", 1]], [[1, 1, 1]], [["j", "1", 1]], ["j"]):
        with pytest.raises(wire.ProtocolError, match="ReturnTasks"):
            wire.decode([header(wire.ReturnTasks.KIND, 3, bad, 6)])


def test_received_payloads_are_views_of_the_frames_not_copies():
    """A daemon forwards a large payload by reference. Reading ``Frame.bytes`` (which
    ``hasattr(frame, "bytes")`` does) copies the payload, a megabyte per task per hop."""
    import tracemalloc

    zmq = pytest.importorskip("zmq")
    big, small = bytes(2**20), b"s" * 10
    header, *_ = wire.SubmitTasks("j", [0, 1], frames=(big, small)).encode()
    frames = [zmq.Frame(header), zmq.Frame(big), zmq.Frame(small)]
    tracemalloc.start()
    try:
        msg = wire.decode(frames)
        allocated = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    view, copied = msg.frames
    assert isinstance(view, memoryview) and view.obj is frames[1]
    assert copied == small and isinstance(copied, bytes)
    assert allocated < wire.ZERO_COPY_MIN, f"decoding allocated {allocated} bytes: the payload was copied"


def test_the_hello_of_a_coordinator_that_takes_output_and_of_one_before_it():
    assert wire.decode(wire.Hello("c", 1, 0.5, True, True).encode()).takes_output is True
    assert wire.decode([header(wire.Hello.KIND, "c", 1, 0.5, True)]).takes_output is False


def test_spool_reads_round_trip_and_malformed_ones_are_refused():
    ask = wire.ReadSpool(42, "output", 17, 3)
    assert wire.decode(ask.encode()) == ask
    rows = wire.SpoolRows(42, [[18, 3, "out"], [19, 4, 0]], "running", frames=(b"hello\n", b"r"))
    assert wire.decode(rows.encode()) == rows
    with pytest.raises(wire.ProtocolError, match="what must be"):
        wire.decode(wire.ReadSpool(42, "inputs", 0).encode())
    with pytest.raises(wire.ProtocolError, match="one frame per row"):
        wire.decode(wire.SpoolRows(42, [[1, 2, 0]], "running").encode())
    with pytest.raises(wire.ProtocolError, match="each row must be"):
        wire.decode(wire.SpoolRows(42, [["1", 2, 0]], "running", frames=(b"",)).encode())
