"""List the cluster's agents from ZooKeeper (works without a coordinator); --watch follows joins, leaves and drains.

Examples:

  clusterctl nodes

  clusterctl nodes --json | jq '.[] | select(.state == "ready") | .node_id'

  clusterctl nodes --watch
"""

from __future__ import annotations

import queue
import sys
import time
from typing import Optional

import typer
from kazoo.exceptions import NoNodeError

from .. import config, layout
from ..layout import AgentRecord, BadRecord
from ..membership import MemberEvent, Membership
from ..zk import close as zk_close
from ..zk import connect as zk_connect
from . import common

COLUMNS = ("NODE", "HOST", "ENDPOINT", "STATE", "WORKERS", "CORES", "MEMORY", "VERSION", "UPTIME")


def nodes(
    zk: common.ZkOpt = common.ZK,
    cluster: Optional[str] = common.CLUSTER,
    config_file: Optional[str] = common.CONFIG,
    zk_auth: Optional[str] = common.ZK_AUTH,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Print joins, leaves and state changes until Ctrl-C."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, dict(zk=zk, cluster=cluster, zk_auth=zk_auth))
        client = zk_connect(cfg.zk, timeout=timeout, auth_file=cfg.zk_auth)
    try:
        if watch:
            _watch(client, cfg.cluster, as_json)
        else:
            _list(client, cfg.cluster, as_json)
    finally:
        zk_close(client)


def read_members(client, cluster: str) -> list[AgentRecord]:
    path = layout.agents_path(cluster)
    try:
        children = client.get_children(path)
    except NoNodeError:
        return []
    records = []
    for child in sorted(children):
        try:
            data, _ = client.get(f"{path}/{child}")
            records.append(AgentRecord.from_bytes(data))
        except (NoNodeError, BadRecord):
            continue  # left meanwhile, or garbage: not a member
    return records


def _row(record: AgentRecord, now: float) -> dict:
    return dict(record.__dict__, uptime=round(max(0.0, now - record.started), 1))


def _list(client, cluster: str, as_json: bool) -> None:
    now = time.time()
    rows = [_row(r, now) for r in read_members(client, cluster)]
    if as_json:
        common.print_json(rows)
        return
    table = [COLUMNS] + [(r["node_id"], r["host"], r["endpoint"], r["state"], str(r["workers"]), str(r["cores"]),
                          _gib(r["memory"]), r["version"], _duration(r["uptime"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    typer.echo(f"{len(rows)} nodes, {sum(r['workers'] for r in rows)} workers", err=True)


def _watch(client, cluster: str, as_json: bool) -> None:
    events: queue.SimpleQueue = queue.SimpleQueue()
    members = Membership(client, cluster, events.put)
    members.start()
    try:
        while True:
            try:
                ev: MemberEvent = events.get(timeout=0.5)
            except queue.Empty:
                continue
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            if as_json:
                common.print_json({"time": stamp, "event": ev.kind, "node_id": ev.node_id,
                                   "record": _row(ev.record, time.time()) if ev.record else None})
            elif ev.record is None:
                typer.echo(f"{stamp} left     {ev.node_id}")
                sys.stdout.flush()
            else:
                r = ev.record
                typer.echo(f"{stamp} {ev.kind:<8} {ev.node_id} {r.state} {r.host} {r.endpoint} {r.workers} workers")
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        members.stop()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}G"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600 \
        else f"{s // 60}m{s % 60}s"
