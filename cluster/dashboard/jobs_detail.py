"""A job's page: its record, and for a detached job its recent failures and the tail of
its tasks' output, read from its spool as `clusterctl job results|logs` read it (the
file, its holder, or its owner's spool service). The owner rule holds here too: the
dashboard shows the spool of the jobs its client key owns, of every job when that key is
listed in the keys directory's ``admins``, and says so for the others."""

from __future__ import annotations

import collections
from typing import Any

from kazoo.client import KazooClient

from cluster.client import records, spool_service
from cluster.client.jobs import result_dict
from cluster.client.spool_reader import JobRows
from cluster.contract import wire
from cluster.contract.layout import BadRecord

FAILURES = 20  # the most recent failures shown
OUTPUT_ROWS = 200  # output rows in the tail
OUTPUT_BYTES = 64 * 1024


def detail(zk: KazooClient, cluster: str, job_id: int, keys_dir: str) -> dict[str, Any] | None:
    """None: no such job (or its znode holds no readable record)."""
    try:
        job = records.find(zk, cluster, job_id)
    except BadRecord:
        return None
    if job is None:
        return None

    def look(number: int) -> records.Listed:
        found = records.find(zk, cluster, number)
        return found if found is not None else job

    out: dict[str, Any] = {"job": job.as_dict(), "failures": [], "output": [], "note": ""}
    if not job.record.spool:
        out["note"] = "attached job: its output went to the terminal that submitted it"
        return out

    def service(host: str, owner: str) -> dict | None:
        return spool_service.find(zk, cluster, host, owner)

    try:
        failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURES)
        for _, index, status, body in JobRows(job, look, "results", keys_dir=keys_dir, service=service):
            if status != wire.OK:
                failures.append(result_dict(index, status, body))
        tail: collections.deque[dict[str, Any]] = collections.deque(maxlen=OUTPUT_ROWS)
        for _, index, stream, data in JobRows(job, look, "output", keys_dir=keys_dir, service=service):
            tail.append(
                {"index": index, "stream": stream, "text": bytes(data)[-OUTPUT_BYTES:].decode(errors="replace")}
            )
    except (PermissionError, ValueError, OSError) as exc:
        out["note"] = str(exc)
        return out
    out["failures"], out["output"] = list(failures), list(tail)
    return out
