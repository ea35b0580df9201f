"""The dashboard's model, without I/O: browsers are sent changed rows only, the timeline
tells joins, drains, leaves and write-offs with their cause, the Work series keeps an
hour, and a snapshot plus the patches after it equals what the model shows."""

from __future__ import annotations

import dataclasses

from helpers import agent_record

from cluster.contract.layout import JobRecord, LeaderRecord
from cluster.dashboard.model import HOUR, State, heartbeat_shown, queue_wait


def status(agents: dict, delivered: int = 0, failed: int = 0, **extra) -> dict:
    return {
        "agents": agents,
        "heartbeat_interval": 1.0,
        "delivered": delivered,
        "failed": failed,
        "queued": 0,
        "running": 0,
        **extra,
    }


def ready(busy: int = 0, age: float = 0.3, written_off: dict | None = None) -> dict:
    return {
        "state": "ready",
        "workers": 4,
        "busy": busy,
        "in_flight": busy,
        "heartbeat_age": age,
        "written_off": written_off or {},
    }


def replay(snapshot: dict, patches: list[dict]) -> dict:
    rows = {row["id"]: row for row in snapshot["nodes"]["set"]}
    for patch in patches:
        for row in patch.get("nodes", {}).get("set", []):
            rows[row["id"]] = row
        for gone in patch.get("nodes", {}).get("del", []):
            rows.pop(gone)
    return rows


def test_only_changed_rows_are_sent_and_on_time_heartbeats_change_nothing():
    state = State()
    for i in range(100):
        state.member_joined(agent_record(f"n{i:03}", workers=4), 0.0)
    state.status_seen(status({f"n{i:03}": ready() for i in range(100)}), 1.0)
    first = state.patch(1.0)
    assert len(first["nodes"]["set"]) == 100 and len(first["timeline"]) == 100
    # Every heartbeat arrived again (ages differ, all on time) and one node got busy.
    agents = {f"n{i:03}": ready(age=0.9 if i % 2 else 0.1) for i in range(100)}
    agents["n042"] = ready(busy=3)
    state.status_seen(status(agents), 2.0)
    second = state.patch(2.0)
    assert [row["id"] for row in second["nodes"]["set"]] == ["n042"]
    assert second["nodes"]["del"] == []
    assert state.patch(2.5) is None  # nothing new: nothing sent
    assert heartbeat_shown(1.9, 1.0) == 0 and heartbeat_shown(7.6, 1.0) == 7 and heartbeat_shown(None, 1.0) is None


def test_the_timeline_tells_joins_drains_leaves_and_write_offs_with_their_cause():
    state = State()
    a1 = agent_record("a1")
    state.member_joined(a1, 10.0)
    state.status_seen(status({"a1": ready()}), 10.5)  # the baseline of write-offs: no news
    state.member_changed(a1.with_state("draining"), 11.0)
    state.status_seen(status({"a1": ready(written_off={"closed": 1})}), 12.0)
    state.member_left("a1", 13.0)
    state.member_left("never-seen", 13.5)
    kinds = [(e["kind"], e["node"], e["detail"]) for e in state.timeline]
    assert kinds[0][:2] == ("joined", "a1")
    assert kinds[1:] == [("draining", "a1", ""), ("written off", "a1", "closed"), ("left", "a1", "")]


def test_a_snapshot_and_the_patches_after_it_show_what_the_model_shows():
    state = State()
    for node in ("a", "b", "c"):
        state.member_joined(agent_record(node), 0.0)
    state.patch(0.0)
    snapshot = state.snapshot(0.0)
    state.member_left("b", 1.0)
    state.member_joined(agent_record("d"), 1.0)
    state.status_seen(status({"a": ready(busy=1), "c": ready(), "d": ready()}), 1.0)
    patches = [state.patch(1.0)]
    state.member_changed(agent_record("c").with_state("draining"), 2.0)
    patches.append(state.patch(2.0))
    assert replay(snapshot, patches) == state.node_rows()
    assert replay(state.snapshot(2.0), []) == state.node_rows()


def test_the_work_series_is_rates_between_statuses_and_keeps_an_hour():
    state = State()
    state.status_seen(status({}, delivered=0), 0.0)
    state.status_seen(status({}, delivered=50, failed=4, queued=7, running=3, tasks_per_second=14.0), 2.0)
    assert list(state.series.samples) == [[2.0, 25.0, 7, 3, 2.0, 0.5]]
    assert state.patch(2.0)["series"] == [[2.0, 25.0, 7, 3, 2.0, 0.5]]
    # The queue wait, by Little's law: none without a queue, unknown for a queue that does not move.
    assert queue_wait(0, 0.0) == 0.0 and queue_wait(30, 10.0) == 3.0 and queue_wait(5, 0.0) is None
    for t in range(3, HOUR + 100):
        state.status_seen(status({}, delivered=50 + t), float(t))
    assert len(state.series.samples) == HOUR
    assert len(state.patch(HOUR + 100.0)["series"]) == HOUR  # what was not sent, but no more than an hour


def test_jobs_show_live_counts_while_running_and_lost_without_their_owner():
    state = State()
    record = JobRecord(
        owner="ann", host="h", pid=1, function="m:f", state="running", total=100, started=0.0, version="x"
    )
    state.job_seen(7, record, True)
    state.job_seen(8, record, False)
    state.job_seen(9, dataclasses.replace(record, state="done", done=100, ended=5.0), False)
    state.status_seen(status({}, job_progress={"7": {"done": 40, "failed": 2, "outstanding": 60}}), 1.0)
    rows = state.job_rows()
    assert (rows["7"]["state"], rows["7"]["done"], rows["7"]["failed"]) == ("running", 40, 2)
    assert rows["8"]["state"] == "lost" and rows["9"]["state"] == "done" and rows["9"]["done"] == 100
    state.job_gone(8)
    assert "8" not in state.job_rows()


def test_failovers_are_the_leaders_seen_one_after_the_other():
    state = State()
    leader = LeaderRecord(
        coordinator_id="c1", endpoint="tcp://h:1", epoch=1, host="h", pid=1, version="x", protocol=1, started=0.0
    )
    state.leader_seen(leader, 1.0)
    state.leader_seen(leader, 2.0)  # the same lead, read again
    state.leader_seen(None, 3.0)
    state.leader_seen(dataclasses.replace(leader, coordinator_id="c2", epoch=2), 4.0)
    state.candidates_seen(3)
    head = state.head()
    assert [(f["from"], f["to"], f["epoch"]) for f in head["failovers"]] == [("", "c1", 1), ("c1", "c2", 2)]
    assert head["standbys"] == 2 and head["leader"]["coordinator_id"] == "c2"
