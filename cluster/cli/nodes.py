"""List the cluster's agents from ZooKeeper (works without a coordinator); --watch follows joins, leaves and drains.

Examples:

  clusterctl nodes

  clusterctl nodes --json | jq '.[] | select(.state == "ready") | .node_id'

  clusterctl nodes --watch            (a live table on a terminal; one event per line when piped)

  clusterctl nodes --watch --json | jq -c 'select(.event == "left")'
"""

from __future__ import annotations

import collections
import queue
import sys
import time
from typing import Optional

import typer
from kazoo.exceptions import NoNodeError

from .. import config, layout
from ..layout import AgentRecord, BadRecord
from ..membership import MemberEvent, Membership
from . import common

COLUMNS = ("NODE", "HOST", "ENDPOINT", "STATE", "WORKERS", "CORES", "MEMORY", "VERSION", "UPTIME")


def nodes(
    zk: common.ZkOpt = common.ZK,
    cluster: Optional[str] = common.CLUSTER,
    config_file: Optional[str] = common.CONFIG,
    zk_auth: Optional[str] = common.ZK_AUTH,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow joins, leaves and state changes until Ctrl-C: "
                               "a live table on a terminal, one event per line otherwise."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, dict(zk=zk, cluster=cluster, zk_auth=zk_auth))
    with common.zookeeper(cfg, timeout) as client:
        if watch:
            _watch(client, cfg.cluster, as_json)
        else:
            _list(client, cfg.cluster, as_json)


def read_members(client, cluster: str) -> list[AgentRecord]:
    path = layout.agents_path(cluster)
    try:
        children = client.get_children(path)
    except NoNodeError:
        return []
    # All reads in flight at once: 5,000 agents cost one pipelined burst, not 5,000 round trips.
    pending = [client.get_async(f"{path}/{child}") for child in sorted(children)]
    records = []
    for result in pending:
        try:
            data, _ = result.get()
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
    table = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    typer.echo(f"{len(rows)} nodes, {sum(r['workers'] for r in rows)} workers", err=True)


def _cells(r: dict) -> tuple[str, ...]:
    return (r["node_id"], r["host"], r["endpoint"], r["state"], str(r["workers"]), str(r["cores"]), _gib(r["memory"]),
            r["version"], _duration(r["uptime"]))


def _watch(client, cluster: str, as_json: bool) -> None:
    events: queue.SimpleQueue = queue.SimpleQueue()
    members = Membership(client, cluster, events.put)
    members.start()
    try:
        if sys.stdout.isatty() and not as_json:
            _live_table(members, events, cluster)
        else:
            _event_lines(events, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        members.stop()


def _event_lines(events: queue.SimpleQueue, as_json: bool) -> None:
    while True:
        try:
            ev: MemberEvent = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if as_json:
            common.print_json({"time": _stamp(), "event": ev.kind, "node_id": ev.node_id,
                               "record": _row(ev.record, time.time()) if ev.record else None})
        else:
            typer.echo(_event_text(ev))
        sys.stdout.flush()


def _event_text(ev: MemberEvent) -> str:
    if ev.record is None:
        return f"{_stamp()} left     {ev.node_id}"
    r = ev.record
    return f"{_stamp()} {ev.kind:<8} {ev.node_id} {r.state} {r.host} {r.endpoint} {r.workers} workers"


def _live_table(members: Membership, events: queue.SimpleQueue, cluster: str) -> None:
    from rich.live import Live  # only a terminal needs it

    recent: collections.deque[str] = collections.deque(maxlen=8)
    with Live(_render(members.snapshot(), recent, cluster), auto_refresh=False) as live:
        while True:
            try:
                recent.appendleft(_event_text(events.get(timeout=1.0)))
                while True:  # a burst of events is one redraw
                    recent.appendleft(_event_text(events.get_nowait()))
            except queue.Empty:
                pass  # redraw anyway: uptimes move
            live.update(_render(members.snapshot(), recent, cluster), refresh=True)


STATE_STYLE = {"ready": "green", "draining": "yellow"}


def _render(snapshot: dict[str, AgentRecord], recent: collections.deque, cluster: str):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    rows = [_row(snapshot[n], now) for n in sorted(snapshot)]
    table = Table(*COLUMNS, title=f"{len(rows)} nodes, {sum(r['workers'] for r in rows)} workers in cluster "
                  f"{cluster!r} (Ctrl-C to stop)", title_justify="left", box=None, header_style="bold")
    for r in rows:  # Text cells: a node id is data, never rich markup
        table.add_row(*(Text(cell, style=STATE_STYLE.get(cell, "red") if i == 3 else "")
                        for i, cell in enumerate(_cells(r))))
    return Group(table, Text("\n".join(recent) or "waiting for changes...", style="dim"))


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}G"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600 \
        else f"{s // 60}m{s % 60}s"
