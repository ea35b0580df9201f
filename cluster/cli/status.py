"""Show the cluster as its leader sees it: epoch, standbys, nodes by state, workers
busy and idle, queued and running tasks, tasks/s over the last minute, failures,
each agent's load and heartbeat age, and the leader's counters.

Examples:

  clusterctl status

  clusterctl status --json | jq .counters
"""

from __future__ import annotations

from typing import Optional

import typer
from kazoo.exceptions import NoNodeError

from cluster.cli import common, options
from cluster.client.leader_status import ask_leader
from cluster.contract import config, layout
from cluster.runtime.zk import ask, read_leader


@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def status(
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper and the leader."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, settings)
    with common.zookeeper(cfg, timeout) as client:
        leader = read_leader(client, cfg.cluster, timeout)
        try:
            candidates = len(ask(client.get_children_async, layout.election_path(cfg.cluster), timeout=timeout))
        except NoNodeError:
            candidates = 0
    if leader is None:
        raise common.fail(f"no coordinator leads cluster {cfg.cluster!r}")
    with common.clear_errors():
        state = ask_leader(leader.endpoint, leader.curve_key, cfg.keys, timeout)
    state["standbys"] = max(0, candidates - 1)
    if as_json:
        common.print_json(state)
        return
    typer.echo(render(state))


def render(state: dict) -> str:
    w = state["workers"]
    nodes = ", ".join(f"{n} {k}" for k, n in sorted(state["nodes"].items())) or "no nodes"
    lines = [
        f"leader {state['coordinator']} (epoch {state['epoch']}) at {state['endpoint']}; {state['standbys']} standby",
        f"{nodes}; workers {w['busy']} busy, {w['idle']} idle of {w['total']}"
        + (f"; heartbeats every {state['heartbeat_interval']:g}s" if "heartbeat_interval" in state else ""),
        f"{state['jobs']} jobs, {state['queued']} queued, {state['running']} running; "
        f"{state['delivered']} done ({state['failed']} failed), {state['tasks_per_second']:g} tasks/s over the last minute",
    ]
    if state.get("relays"):
        bypassed = set(state.get("relays_bypassed", ()))
        relays = (
            f"{r} at {e}" + (" (silent: its agents are reached directly)" if r in bypassed else "")
            for r, e in sorted(state["relays"].items())
        )
        lines.append(f"relays: {', '.join(relays)}")
    if state.get("written_off"):
        causes = ", ".join(f"{n} {cause}" for cause, n in sorted(state["written_off"].items()))
        lines.append(f"agents written off while registered: {causes}")
    for node, a in sorted(state["agents"].items()):
        age = "never heard" if a["heartbeat_age"] is None else f"heartbeat {a['heartbeat_age']:.1f}s ago"
        via = f" via {a['via']}" if a.get("via") else ""
        lines.append(
            f"  {node:<20} {a['state']:<11} workers {a['busy']}/{a['workers']:<3} busy, "
            f"in flight {a['in_flight']:<4} {age}{via}"
        )
    counters = ", ".join(f"{k} {v}" for k, v in sorted(state["counters"].items()))
    lines.append(f"counters: {counters or 'none'}")
    return "\n".join(lines)
