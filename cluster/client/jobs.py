"""``cluster.jobs``: the cluster's jobs from Python, as ``clusterctl jobs`` shows them.

    import cluster
    for job in cluster.jobs.list(all=True):
        print(job["id"], job["state"], job["done"], job["total"])
    final = cluster.jobs.wait(42, timeout=600)
    for result in cluster.jobs.results(44, follow=True):   # a detached job's, as they come
        print(result["index"], result.get("result"))
    cluster.jobs.cancel(43)

Each call opens a ZooKeeper session of its own (``zk``, default env CLUSTER_ZK; ``cluster``,
default env CLUSTER_NAME) and closes it. A job is a dict: id, owner, host, pid, function,
state (running, done, failed, cancelled, lost), total, done, failed, started, ended,
elapsed, version; counts are the record's (a running job's live counts are the leader's:
``clusterctl jobs`` shows them).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from kazoo.client import KazooClient

from cluster.client import records, spool_service
from cluster.client.spool_reader import JobRows
from cluster.contract import payload, wire
from cluster.runtime.zk import close, connect


class NoSuchJob(LookupError):
    """No job of that id in the cluster."""


NotYours = records.NotYours  # the job belongs to another key, and this one is not an admin's


def list(
    *,
    all: bool = False,
    zk: str | None = None,
    cluster: str | None = None,
    zk_auth: str | None = None,
    timeout: float = 10.0,
) -> builtins.list[dict[str, Any]]:
    """The jobs running now and lost ones, oldest first; ``all``: finished ones too."""
    with _session(zk, zk_auth, timeout, cluster) as (client, name):
        listed, _ = records.list_jobs(client, name, timeout)
    now = time.time()
    return [job.as_dict(now) for job in listed if all or job.state not in records.ENDED]


def status(
    job_id: int, *, zk: str | None = None, cluster: str | None = None, zk_auth: str | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """One job (NoSuchJob if there is none)."""
    with _session(zk, zk_auth, timeout, cluster) as (client, name):
        return _find(client, name, job_id, timeout).as_dict()


def wait(
    job_id: int,
    timeout: float | None = None,
    *,
    zk: str | None = None,
    cluster: str | None = None,
    zk_auth: str | None = None,
    poll: float = 0.25,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The job once it has ended (or is lost); TimeoutError after ``timeout`` seconds.
    ``on_poll(job)`` sees it at each look while it runs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _session(zk, zk_auth, 10.0, cluster) as (client, name):
        while True:
            job = _find(client, name, job_id, 10.0)
            if job.state in records.FINAL:
                return job.as_dict()
            if on_poll is not None:
                on_poll(job.as_dict())
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout:g} s")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))


def cancel(
    job_id: int,
    *,
    zk: str | None = None,
    cluster: str | None = None,
    zk_auth: str | None = None,
    keys: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Ask for a running job to be cancelled: its owner stops its tasks, running ones too
    (``clusterctl job wait`` or ``wait`` tells when it has). Only its owner or an admin
    key may (NotYours). Returns the job as it was asked; a job that has ended already is
    left as it is."""
    keys_dir = _keys(keys)
    with _session(zk, zk_auth, timeout, cluster) as (client, name):
        job = _find(client, name, job_id, timeout)
        records.check_entitled(job, keys_dir)
        if job.state not in records.ENDED:
            records.request_cancel(client, name, job, timeout, keys_dir)
        return job.as_dict()


def results(
    job_id: int,
    *,
    follow: bool = False,
    zk: str | None = None,
    cluster: str | None = None,
    zk_auth: str | None = None,
    keys: str | None = None,
) -> Iterator[dict[str, Any]]:
    """A detached job's results in the order they were recorded, each as ``clusterctl
    submit`` prints it: ``{"index": 0, "ok": True, "result": ...}`` or ``{"index": 1, "ok":
    False, "error": "...", "traceback": "..."}``. With ``follow``, until the job ends. From
    any host (docs/jobs.md); only its owner may."""
    with _session(zk, zk_auth, 10.0, cluster) as (client, name):

        def look(number: int) -> records.Listed:
            return _find(client, name, number, 10.0)

        def service(host: str, owner: str) -> dict | None:
            return spool_service.find(client, name, host, owner)

        rows = JobRows(look(job_id), look, "results", follow=follow, keys_dir=_keys(keys), service=service)
        for _, index, status, body in rows:
            yield result_dict(index, status, body)


def _keys(keys: str | None) -> str:
    return os.environ.get("CLUSTER_KEYS", "") if keys is None else keys


def result_dict(index: int, status: int, body: bytes) -> dict[str, Any]:
    if status == wire.OK:
        return {"index": index, "ok": True, **json.loads(body)}
    error = payload.load_error(body)
    return {
        "index": index,
        "ok": False,
        "error": f"{error['type']}: {error['message']}",
        "traceback": error["traceback"],
    }


def _find(client: KazooClient, cluster: str, job_id: int, timeout: float) -> records.Listed:
    job = records.find(client, cluster, job_id, timeout)
    if job is None:
        raise NoSuchJob(f"no job {job_id} in cluster {cluster!r}")
    return job


@contextlib.contextmanager
def _session(
    zk: str | None, zk_auth: str | None, timeout: float, cluster: str | None
) -> Iterator[tuple[KazooClient, str]]:
    client = connect(
        zk or os.environ.get("CLUSTER_ZK", "127.0.0.1:2181"),
        timeout=timeout,
        auth_file=os.environ.get("CLUSTER_ZK_AUTH", "") if zk_auth is None else zk_auth,
    )
    try:
        yield client, cluster or os.environ.get("CLUSTER_NAME", "default")
    finally:
        close(client)
