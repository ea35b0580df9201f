"""Asking the leading coordinator for its status document (`clusterctl status --json`):
what the status command, `clusterctl jobs` and the dashboard read."""

from __future__ import annotations

import zmq

from cluster.contract import security, wire


def ask_leader(endpoint: str, curve_key: str, keys_dir: str, timeout: float) -> dict:
    """The leader's status document (ValueError when it cannot be had)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve_key:
            if not keys_dir:
                raise ValueError("the cluster requires CURVE keys: give --keys DIR (env CLUSTER_KEYS)")
            keys = security.load(keys_dir, "client")
            security.connect_to(sock, keys, keys.coordinator)
        sock.connect(endpoint)
        sock.send_multipart(wire.StatusRequest().encode())
        if not sock.poll(int(timeout * 1000)):
            raise ValueError(f"the leader at {endpoint} did not answer within {timeout:g} s")
        reply = wire.decode(sock.recv_multipart())
        if not isinstance(reply, wire.StatusReply):
            raise ValueError(f"the leader answered {type(reply).__name__} instead of its status")
        return reply.status
    finally:
        sock.close(0)
        ctx.term()
