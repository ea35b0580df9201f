"""List the cluster's agents and relays from ZooKeeper (works without a coordinator); --watch follows joins, leaves and drains.

Examples:

  clusterctl nodes

  clusterctl nodes --json | jq '.[] | select(.state == "ready") | .node_id'

  clusterctl nodes --relays --json | jq '.[] | {node_id, agents}'

  clusterctl nodes --watch            (a live table on a terminal; one event per line when piped)

  clusterctl nodes --watch --json | jq -c 'select(.event == "left")'

PYTHON and PLATFORM are the interpreter and platform each agent's workers run: the Executor's
functions (serialized by value) go only to agents on the client's Python minor version.

Agents behind a relay (`clusterctl agent --relay ID`) show it in their RELAY column; the relays follow the agents in the table, with the number of agents that name each one.
"""

from __future__ import annotations

import collections
import queue
import sys
import time
from typing import TYPE_CHECKING, Optional, TypeVar

import typer
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from cluster.cli import common, options
from cluster.contract import config
from cluster.contract.layout import AgentRecord, BadRecord, RelayRecord
from cluster.runtime.membership import MemberEvent, Membership
from cluster.runtime.zk import answer, ask

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

COLUMNS = (
    "NODE",
    "HOST",
    "ENDPOINT",
    "STATE",
    "WORKERS",
    "CORES",
    "MEMORY",
    "VERSION",
    "PYTHON",
    "PLATFORM",
    "UPTIME",
    "RELAY",
)
RELAY_COLUMNS = ("RELAY", "HOST", "ENDPOINT", "AGENTS", "VERSION", "UPTIME")


@options.with_settings(config.Common, only=("zk", "cluster", "zk_auth"))
def nodes(
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    relays: bool = typer.Option(
        False,
        "--relays",
        help="List the relays instead of the agents (with --json: one object per relay, with how many agents name it).",
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="Follow joins, leaves and state changes until Ctrl-C: "
        "a live table on a terminal, one event per line otherwise.",
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, settings)
    with common.zookeeper(cfg, timeout) as client:
        if watch:
            _watch(client, cfg.cluster, as_json)
        else:
            _list(client, cfg.cluster, as_json, relays)


M = TypeVar("M", AgentRecord, RelayRecord)  # the record type of the members read


def read_members(client: KazooClient, cluster: str, record_type: type[M]) -> list[M]:
    """The agents' records (or, with ``record_type=RelayRecord``, the relays')."""
    path = record_type.folder(cluster)
    try:
        children = ask(client.get_children_async, path)
    except NoNodeError:
        return []
    # All reads in flight at once: 5,000 agents cost one pipelined burst, not 5,000 round trips.
    pending = [client.get_async(f"{path}/{child}") for child in sorted(children)]
    records: list[M] = []
    for result in pending:
        try:
            data, _ = answer(result)
            records.append(record_type.from_bytes(data))
        except (NoNodeError, BadRecord):
            continue  # left meanwhile, or garbage: not a member
    return records


def _row(record, now: float) -> dict:
    return dict(record.__dict__, uptime=round(max(0.0, now - record.started), 1))


def _relay_rows(relays: list[RelayRecord], agents: list[AgentRecord], now: float) -> list[dict]:
    named = collections.Counter(a.relay for a in agents if a.relay)
    return [dict(_row(r, now), agents=named[r.node_id]) for r in relays]


def _list(client, cluster: str, as_json: bool, relays_only: bool) -> None:
    now = time.time()
    agents = read_members(client, cluster, AgentRecord)
    rows = [_row(r, now) for r in agents]
    relay_rows = _relay_rows(read_members(client, cluster, RelayRecord), agents, now)
    if as_json:
        common.print_json(relay_rows if relays_only else rows)
        return
    if not relays_only:
        common.print_table(COLUMNS, [_cells(r) for r in rows])
    if relay_rows and not relays_only:
        typer.echo("")
    if relay_rows or relays_only:
        common.print_table(RELAY_COLUMNS, [_relay_cells(r) for r in relay_rows])
    typer.echo(
        f"{len(rows)} nodes, {sum(r['workers'] for r in rows)} workers"
        + (f", {len(relay_rows)} relays" if relay_rows else ""),
        err=True,
    )


def _cells(r: dict) -> tuple[str, ...]:
    return (
        r["node_id"],
        r["host"],
        r["endpoint"],
        r["state"],
        str(r["workers"]),
        str(r["cores"]),
        _gib(r["memory"]),
        r["version"],
        r["python"] or "-",  # an agent of a release that does not say
        r["platform"] or "-",
        common.format_duration(r["uptime"]),
        r["relay"] or "-",
    )


def _relay_cells(r: dict) -> tuple[str, ...]:
    return (r["node_id"], r["host"], r["endpoint"], str(r["agents"]), r["version"], common.format_duration(r["uptime"]))


def _watch(client, cluster: str, as_json: bool) -> None:
    events: queue.SimpleQueue = queue.SimpleQueue()  # of (role, MemberEvent)
    agents = Membership(client, cluster, lambda ev: events.put(("agent", ev)))
    relays = Membership(client, cluster, lambda ev: events.put(("relay", ev)), RelayRecord)
    agents.start()
    relays.start()
    try:
        if sys.stdout.isatty() and not as_json:
            _live_table(agents, relays, events, cluster)
        else:
            _event_lines(events, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        agents.stop()
        relays.stop()


def _event_lines(events: queue.SimpleQueue, as_json: bool) -> None:
    while True:
        try:
            role, ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if as_json:
            common.print_json(
                {
                    "time": _stamp(),
                    "event": ev.kind,
                    "role": role,
                    "node_id": ev.node_id,
                    "record": _row(ev.record, time.time()) if ev.record else None,
                }
            )
        else:
            typer.echo(_event_text(role, ev))
        sys.stdout.flush()


def _event_text(role: str, ev: MemberEvent) -> str:
    if ev.record is None:
        return f"{_stamp()} left     {ev.node_id}" + (" (relay)" if role == "relay" else "")
    r = ev.record
    if role == "relay":
        return f"{_stamp()} {ev.kind:<8} {ev.node_id} relay {r.host} {r.endpoint}"
    return f"{_stamp()} {ev.kind:<8} {ev.node_id} {r.state} {r.host} {r.endpoint} {r.workers} workers" + (
        f" via relay {r.relay}" if r.relay else ""
    )


def _live_table(agents: Membership, relays: Membership, events: queue.SimpleQueue, cluster: str) -> None:
    from rich.live import Live  # only a terminal needs it

    recent: collections.deque[str] = collections.deque(maxlen=8)
    with Live(_render(agents.snapshot(), relays.snapshot(), recent, cluster), auto_refresh=False) as live:
        while True:
            try:
                recent.appendleft(_event_text(*events.get(timeout=1.0)))
                while True:  # a burst of events is one redraw
                    recent.appendleft(_event_text(*events.get_nowait()))
            except queue.Empty:
                pass  # redraw anyway: uptimes move
            live.update(_render(agents.snapshot(), relays.snapshot(), recent, cluster), refresh=True)


STATE_STYLE = {"ready": "green", "draining": "yellow"}


def _render(agents: dict[str, AgentRecord], relays: dict[str, RelayRecord], recent: collections.deque, cluster: str):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    rows = [_row(agents[n], now) for n in sorted(agents)]
    relay_rows = _relay_rows([relays[n] for n in sorted(relays)], list(agents.values()), now)
    title = f"{len(rows)} nodes, {sum(r['workers'] for r in rows)} workers"
    title += f", {len(relay_rows)} relays" if relay_rows else ""
    table = Table(
        *COLUMNS,
        title=f"{title} in cluster {cluster!r} (Ctrl-C to stop)",
        title_justify="left",
        box=None,
        header_style="bold",
    )
    for r in rows:  # Text cells: a node id is data, never rich markup
        table.add_row(
            *(Text(cell, style=STATE_STYLE.get(cell, "red") if i == 3 else "") for i, cell in enumerate(_cells(r)))
        )
    parts: list[Table | Text] = [table]
    if relay_rows:
        relay_table = Table(*RELAY_COLUMNS, box=None, header_style="bold")
        for r in relay_rows:
            relay_table.add_row(*(Text(cell) for cell in _relay_cells(r)))
        parts += [Text(""), relay_table]
    return Group(*parts, Text("\n".join(recent) or "waiting for changes...", style="dim"))


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}G"
