"""A worker process: runs one task at a time for its agent.

Started by the agent as ``python -m agents.worker ENDPOINT SLOT PARENT_PID``.
It is the only place besides the client that deserializes user payloads. It
exits by itself when its agent is gone, even after a SIGKILL of the agent:
the kernel sends it SIGKILL (PR_SET_PDEATHSIG), and a ppid check covers the
window before that is armed and kernels without it.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
from typing import Callable

import zmq

from cluster import lifeline, payload, wire

FUNCTION_CACHE = 64
PARENT_CHECK_MS = 500


def run_task(functions: collections.OrderedDict, msg: wire.RunTask) -> tuple[int, bytes]:
    fmt = msg.options.get("result_format", payload.RESULT_PICKLE)
    fn_frame, args_frame = msg.frames
    try:
        fn = _function(functions, msg.digest, fn_frame)
        if fn is None:
            return wire.NEED_FUNCTION, b""
        args, kwargs = payload.load_args(args_frame)
        value = fn(*args, **kwargs)
        body = payload.pack_result(value, fmt)
        limit = msg.options.get("max_payload", wire.MAX_PAYLOAD_DEFAULT)
        if isinstance(limit, int) and len(body) > limit:
            return wire.ERROR, payload.failure(
                "ResultTooLarge", f"the result is {len(body) / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB")
        return wire.OK, body
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code are task errors too
        return wire.ERROR, payload.pack_error(exc, fmt)


def _function(functions: collections.OrderedDict, digest: str, blob: bytes) -> Callable | None:
    fn = functions.get(digest)
    if fn is not None:
        functions.move_to_end(digest)
        return fn
    if not blob:
        return None
    fn = payload.load_function(blob)
    functions[digest] = fn
    if len(functions) > FUNCTION_CACHE:
        functions.popitem(last=False)
    return fn


def main(argv: list[str]) -> int:
    endpoint, slot, parent_pid = argv[0], int(argv[1]), int(argv[2])
    lifeline.die_with(parent_pid, signal.SIGKILL)
    # Ctrl-C in a terminal signals the whole process group; the agent decides
    # when its workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, -1)  # only its own agent talks to it, over a private ipc socket
    sock.setsockopt(zmq.ROUTING_ID, f"{slot}:{os.getpid()}".encode())
    sock.connect(endpoint)
    sock.send_multipart(wire.WorkerReady(slot, os.getpid()).encode())
    functions: collections.OrderedDict = collections.OrderedDict()
    while True:
        if not sock.poll(PARENT_CHECK_MS):
            if os.getppid() != parent_pid:
                return 0
            continue
        frames = sock.recv_multipart()
        try:
            msg = wire.decode(frames)
        except wire.ProtocolError:
            continue  # only our agent talks to us; a bad frame is dropped, not fatal
        if not isinstance(msg, wire.RunTask):
            continue
        status, body = run_task(functions, msg)
        sock.send_multipart(wire.TaskDone(msg.job_id, msg.index, msg.attempt, status, frames=(body,)).encode())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
