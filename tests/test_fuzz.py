"""Hostile input: property-based decoding, and 100,000 malformed messages fired
at a running cluster's three doors (the coordinator's client port, the
coordinator's agent channel, an agent's endpoint) while a job runs."""

from __future__ import annotations

import json
import random
import subprocess
import time

import msgpack
import psutil
import zmq
from helpers import PY, ROOT, agent_record, scrape, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.contract import layout, wire
from cluster.contract.layout import AgentRecord
from cluster.contract.version import PROTOCOL_VERSION
from cluster.runtime.zkserver import free_ports


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_decode_rejects_or_returns_a_message_for_any_frames(frames):
    try:
        assert isinstance(wire.decode(frames), wire.Message)
    except wire.ProtocolError:
        pass


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(0, 40),
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=8),
            st.binary(max_size=8),
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
            st.none(),
            st.floats(),
        ),
        max_size=7,
    ),
)
def test_well_formed_msgpack_with_wrong_fields_is_rejected_cleanly(kind, fields):
    frames = [msgpack.packb([PROTOCOL_VERSION, kind, *fields], use_bin_type=True), b"x"]
    try:
        wire.decode(frames)
    except wire.ProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8), st.none()),
        max_size=6,
    ),
    st.lists(st.binary(max_size=8), max_size=3),
)
def test_task_output_with_any_fields_and_frames_decodes_or_is_rejected_cleanly(fields, frames):
    """The kind above, aimed at TaskOutput: its one data frame and its stream name."""
    try:
        msg = wire.decode([msgpack.packb([PROTOCOL_VERSION, wire.TaskOutput.KIND, *fields]), *frames])
    except wire.ProtocolError:
        return
    assert isinstance(msg, wire.TaskOutput) and msg.stream in ("out", "err") and len(msg.frames) == 1


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=8),
            st.binary(max_size=8),
            st.none(),
            st.lists(
                st.lists(st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1)), max_size=5), max_size=3
            ),
        ),
        max_size=8,
    ),
    st.sampled_from([wire.LoadFailed.KIND, wire.JobFailed.KIND]),
)
def test_load_failures_with_any_fields_decode_or_are_rejected_cleanly(fields, kind):
    """The kind above, aimed at LoadFailed and JobFailed's per-node errors: strings only."""
    try:
        msg = wire.decode([msgpack.packb([PROTOCOL_VERSION, kind, *fields])])
    except wire.ProtocolError:
        return
    rows = [msg.row()] if isinstance(msg, wire.LoadFailed) else msg.errors
    assert all(len(row) == 4 and all(type(v) is str for v in row) for row in rows)


def garbage(rng: random.Random) -> list[bytes]:
    """A message that can never decode: each kind of malformation in turn."""
    choice = rng.randrange(5)
    if choice == 0:
        return [b"\xc1" + rng.randbytes(rng.randrange(40))]  # 0xc1 is never valid msgpack
    if choice == 1:
        head = msgpack.packb([PROTOCOL_VERSION, wire.Heartbeat.KIND, "x" * 20, 1, 0])
        return [head[: rng.randrange(1, len(head) - 1)]]  # truncated
    if choice == 2:
        return [msgpack.packb([PROTOCOL_VERSION + 7, wire.Heartbeat.KIND, "x", 1, 0])]  # another version
    if choice == 3:
        return [msgpack.packb([PROTOCOL_VERSION, 200 + rng.randrange(50)]), rng.randbytes(10)]  # unknown kind
    return [msgpack.packb([PROTOCOL_VERSION, wire.Results.KIND, 1, [["j", 1]]]), b"r"]  # short row


def fire(sock: zmq.Socket, count: int, seed: int, prefix: list[bytes] | None = None) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        while True:
            try:
                sock.send_multipart([*(prefix or []), *garbage(rng)], flags=zmq.NOBLOCK)
                break
            except (zmq.Again, zmq.error.ZMQError) as exc:  # full pipe (EAGAIN, or EHOSTUNREACH mid-handshake)
                if isinstance(exc, zmq.ZMQError) and exc.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                    raise
                time.sleep(0.001)


def test_100k_malformed_messages_while_a_job_runs(local_cluster, tmp_path):
    cluster = local_cluster
    (metrics_port,) = free_ports(1)
    coordinator = cluster.coordinator()
    a1 = cluster.agent("a1", 2, "--metrics-port", str(metrics_port))
    cluster.agent("a2", 2)
    cluster.wait_ready(coordinator, ["a1", "a2"])
    rss = {p.name: psutil.Process(p.pid).memory_info().rss for p in (coordinator, a1)}

    module = tmp_path / "sq.py"
    module.write_text("import time\n\ndef sq(x):\n    time.sleep(0.002)\n    return x * x\n")
    out = tmp_path / "out.jsonl"
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{module}:sq", "--range", "0", "6000", "--output", str(out)],
        env=cluster.env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    ctx = zmq.Context()
    try:
        # Door 1: the coordinator's client port.
        client_port = ctx.socket(zmq.DEALER)
        client_port.setsockopt(zmq.LINGER, 0)
        client_port.connect(cluster.leader().endpoint)
        # Door 2: a fake agent the coordinator connects to, which answers with garbage.
        fake = ctx.socket(zmq.ROUTER)
        fake.setsockopt(zmq.LINGER, 0)
        fake.setsockopt(zmq.ROUTING_ID, b"fuzz")
        fake.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full pipe is EAGAIN (retried), not a silent drop
        port = fake.bind_to_random_port("tcp://127.0.0.1")
        record = agent_record(
            "fuzz", host="fuzzhost", endpoint=f"tcp://127.0.0.1:{port}", protocol=PROTOCOL_VERSION, started=time.time()
        )
        cluster.kazoo.create(layout.agent_path(cluster.name, "fuzz"), record.to_bytes(), ephemeral=True)
        assert fake.poll(10_000), "the coordinator never connected to the fake agent"
        coordinator_identity = fake.recv_multipart()[0]
        # Door 3: an agent's own endpoint.
        data, _ = cluster.kazoo.get(layout.agent_path(cluster.name, "a1"))
        agent_port = ctx.socket(zmq.DEALER)
        agent_port.setsockopt(zmq.LINGER, 0)
        agent_port.connect(AgentRecord.from_bytes(data).endpoint)

        fire(client_port, 40_000, 1)
        fire(fake, 30_000, 2, prefix=[coordinator_identity])
        fire(agent_port, 30_000, 3)

        _, err = job.communicate(timeout=240)
        assert job.returncode == 0, err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["index"] for r in rows) == list(range(6000))
        assert all(r["ok"] and r["result"] == r["index"] ** 2 for r in rows)

        assert coordinator.popen.poll() is None and a1.popen.poll() is None
        cluster.wait_status(
            lambda s: s["counters"].get("dropped_messages", 0) >= 70_000, 60, what="the coordinator to read all garbage"
        )
        assert cluster.status()["counters"]["dropped_messages"] == 70_000
        dropped = "clusterd_dropped_messages_total"
        wait_for(lambda: scrape(metrics_port)[dropped] >= 30_000, 60, what="a1 to read all garbage")
        assert scrape(metrics_port)[dropped] == 30_000
        grown = {p.name: psutil.Process(p.pid).memory_info().rss - rss[p.name] for p in (coordinator, a1)}
        print(f"RSS growth after 100,000 malformed messages: {grown}")
        assert all(g < 40 * 2**20 for g in grown.values()), grown
    finally:
        ctx.destroy(linger=0)


def test_an_agent_that_leaves_while_its_messages_stream_in_does_not_abort_the_coordinator(local_cluster):
    """Polling a ROUTER reads a message's first frame ahead; libzmq aborts (`!_more`,
    fq.cpp) if that peer is disconnected before the rest is read. The coordinator reads
    its sockets before it acts on a leave: an agent that streams multipart messages
    and deregisters, again and again, must find it alive."""
    coordinator = local_cluster.coordinator()
    wait_for(lambda: local_cluster.leader() is not None, 15, what="a leader")
    ctx = zmq.Context()
    try:
        for round_ in range(5):
            fake = ctx.socket(zmq.ROUTER)
            fake.setsockopt(zmq.LINGER, 0)
            fake.setsockopt(zmq.ROUTING_ID, b"streamer")
            port = fake.bind_to_random_port("tcp://127.0.0.1")
            record = agent_record(
                "streamer",
                host="fuzzhost",
                endpoint=f"tcp://127.0.0.1:{port}",
                protocol=PROTOCOL_VERSION,
                started=time.time() + round_,
            )
            path = layout.agent_path(local_cluster.name, "streamer")
            local_cluster.kazoo.create(path, record.to_bytes(), ephemeral=True)
            assert fake.poll(10_000), "the coordinator never connected"
            peer = fake.recv_multipart()[0]
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # two frames each: the first is read ahead
                fake.send_multipart([peer, b"\x01", b"payload"], zmq.NOBLOCK)
            local_cluster.kazoo.delete(path)
            for _ in range(2000):  # still streaming while the coordinator drops it
                try:
                    fake.send_multipart([peer, b"\x01", b"payload"], zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
            fake.close(0)
            local_cluster.wait_agent("streamer", None, timeout=10)  # it has acted on the leave
            local_cluster.status()  # and goes on answering: its loop is past it
            assert coordinator.popen.poll() is None, coordinator.text()[-2000:]
    finally:
        ctx.destroy(linger=0)
