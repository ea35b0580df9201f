"""The moment a coordinator takes the lead, seen from a client: the leader znode
appears only once the coordinator's loop leads, and a client that was refused
anyway (a coordinator that stepped down, or an older release) submits again as
soon as the coordinator answers it as a leader. A refused job used to wait forever.

Real ZooKeeper; the coordinator in the client test is a ROUTER socket the test
drives, so the refusal happens every run instead of in one race out of many."""

from __future__ import annotations

import queue
import threading
import time

import msgpack
import pytest
import zmq
from helpers import wait_for

from cluster.client.session import ClusterClient, ClusterUnavailable
from cluster.contract import wire
from cluster.contract.layout import LeaderRecord
from cluster.contract.version import PROTOCOL_VERSION
from cluster.coordinator import election
from cluster.runtime.zk import read_leader


def _record(epoch: int, endpoint: str = "tcp://127.0.0.1:9") -> LeaderRecord:
    return LeaderRecord(
        coordinator_id="c-test",
        endpoint=endpoint,
        epoch=epoch,
        host="test",
        pid=1,
        version="test",
        protocol=PROTOCOL_VERSION,
        started=time.time(),
    )


def test_the_leader_znode_appears_only_once_the_loop_took_the_lead(kazoo_client, cluster_name):
    events: queue.Queue = queue.Queue()
    lead = election.LeaderElection(
        kazoo_client,
        cluster_name,
        "c-test",
        _record,
        lambda kind, epoch: events.put((kind, epoch)),
        prepare=lambda: None,
    )
    lead.start()
    try:
        kind, epoch = events.get(timeout=10)
        assert kind == election.ELECTED
        time.sleep(0.5)  # time enough to publish, had it not waited
        assert read_leader(kazoo_client, cluster_name) is None
        lead.took_lead(epoch - 1)  # an ELECTED handled late, from a lead already over
        time.sleep(0.5)
        assert read_leader(kazoo_client, cluster_name) is None
        lead.took_lead(epoch)
        published = wait_for(lambda: read_leader(kazoo_client, cluster_name), 10, what="the leader znode")
        assert published.epoch == epoch
    finally:
        lead.stop()
    assert events.get(timeout=5) == (election.DEPOSED, epoch)


def test_a_refused_client_submits_again_once_the_coordinator_leads(kazoo_client, zk_connect, cluster_name):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    election.publish_leader(kazoo_client, cluster_name, _record(1, f"tcp://127.0.0.1:{port}"))
    client = ClusterClient(zk_connect, cluster_name, connect_timeout=10)
    opened: dict = {}

    def open_job() -> None:
        try:
            opened["job"] = client.open_job(b"function", {}, lambda *result: None)
        except Exception as exc:
            opened["error"] = exc

    def receive(timeout: float) -> tuple[bytes, wire.Message] | None:
        if not router.poll(int(timeout * 1000)):
            return None
        identity, *frames = router.recv_multipart()
        return identity, wire.decode(frames)

    opener = threading.Thread(target=open_job)
    opener.start()
    try:
        # Not leading: every message is refused, heartbeats too, as the coordinator does.
        refused_until, seen = time.monotonic() + 2.5, []
        while (left := refused_until - time.monotonic()) > 0:
            got = receive(left)
            if got is not None:
                identity, msg = got
                seen.append(type(msg).__name__)
                router.send_multipart([identity, *wire.Refused("not the leader; look up the leader").encode()])
        assert seen.count("SubmitJob") == 1, seen  # nothing sent again to a coordinator that does not lead
        assert "Heartbeat" in seen, seen

        # Leading now: the client hears a heartbeat answered, and submits its job again.
        deadline, resubmitted = time.monotonic() + 5, None
        while resubmitted is None and (left := deadline - time.monotonic()) > 0:
            got = receive(left)
            if got is None:
                break
            identity, msg = got
            if isinstance(msg, wire.Heartbeat):
                router.send_multipart([identity, *wire.Heartbeat("c-test", 1, 0).encode()])
            elif isinstance(msg, wire.SubmitJob):
                resubmitted = msg
                router.send_multipart([identity, *wire.JobAccepted(msg.job_id, 100, 2, 1, 2**20).encode()])
        assert resubmitted is not None, "the client never submitted its refused job again"
        opener.join(10)
        assert "error" not in opened, opened.get("error")
        assert opened["job"].job_id == resubmitted.job_id and opened["job"].window == 100
    finally:
        client.close()
        opener.join(10)
        router.close(0)
        ctx.term()


def test_a_client_refused_for_its_protocol_version_fails_with_the_reason(kazoo_client, zk_connect, cluster_name):
    """A coordinator of another protocol version refuses a client in a message the client
    can still read: the job fails at once with the reason, instead of waiting for a timeout."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    election.publish_leader(kazoo_client, cluster_name, _record(1, f"tcp://127.0.0.1:{port}"))
    client = ClusterClient(zk_connect, cluster_name, connect_timeout=10)
    refusal = msgpack.packb(
        [
            PROTOCOL_VERSION + 1,
            wire.Refused.KIND,
            "peer speaks protocol version 1, this side speaks 2",
            wire.Refusal.PROTOCOL_VERSION,
        ]
    )

    def refuse_everything() -> None:
        while router.poll(3000):
            identity, *_ = router.recv_multipart()
            router.send_multipart([identity, refusal])

    refuser = threading.Thread(target=refuse_everything)
    refuser.start()
    try:
        # The reason, not "did not answer within 10 s": it was heard and understood.
        with pytest.raises(ClusterUnavailable, match="protocol version 1, this side speaks 2"):
            client.open_job(b"function", {}, lambda *result: None)
    finally:
        client.close()
        refuser.join(10)
        router.close(0)
        ctx.term()
