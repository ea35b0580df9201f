"""The scheduler alone: credit, batching, fairness, retries, exactly-once."""

from __future__ import annotations

from cluster.contract import wire
from cluster.coordinator.scheduler import AgentSlot, Scheduler


def make(n_tasks=10, retries=2, agents=(("a", 2, 4),)):
    s = Scheduler(max_batch=256)
    for node, workers, capacity in agents:
        s.agent_up(node, workers, capacity, [])
    job = s.add_job("j", b"client", b"fn", "d", {"retries": retries}, now=0.0)
    s.add_tasks(job, list(range(n_tasks)), tuple(b"%d" % i for i in range(n_tasks)))
    return s, job


def dispatched(batches):
    return {b.node_id: [t[0] for t in b.tasks] for b in batches}


def test_never_sends_more_than_credit_and_batches():
    s, job = make(100)
    batches = s.plan()
    assert dispatched(batches) == {"a": [0, 1, 2, 3]}
    assert batches[0].send_spec is True
    assert s.plan() == []  # no credit left
    s.on_result("a", "j", 0, 1, wire.OK, b"r")
    (batch,) = s.plan()
    assert [t[0] for t in batch.tasks] == [4] and batch.send_spec is False


def test_idle_workers_everywhere_before_prefetch():
    s, _ = make(4, agents=(("a", 2, 4), ("b", 2, 4)))
    got = dispatched(s.plan())
    assert sorted(len(v) for v in got.values()) == [2, 2]


def test_first_result_wins_and_duplicates_are_dropped():
    s, job = make(1, agents=(("a", 1, 1), ("b", 1, 1)))
    s.plan()
    s.agent_down("a")  # task 0 goes back to the queue
    (batch,) = s.plan()
    assert batch.node_id == "b" and batch.tasks[0][1] == 2  # second attempt
    s.on_result("b", "j", 0, 2, wire.OK, b"late")
    s.on_result("a", "j", 0, 1, wire.OK, b"stale")  # the lost agent reappears
    assert job.outbox == [(0, wire.OK, b"late")]
    assert s.counters["duplicate_results"] == 1


def test_lost_worker_is_retried_then_reported():
    s, job = make(1, retries=1, agents=(("a", 1, 1),))
    for attempt, retried in ((1, True), (2, False)):
        (batch,) = s.plan()
        assert batch.tasks[0][1] == attempt
        assert s.on_result("a", "j", 0, attempt, wire.LOST, b"worker exited with signal 9") is retried
    assert s.on_result("a", "j", 0, 1, wire.LOST, b"an old attempt, reported late") is None
    assert job.outbox == [(0, wire.LOST, b"worker exited with signal 9")]
    assert s.plan() == [] and s.queued == 0


def test_agent_loss_requeues_only_its_current_attempts():
    s, job = make(6, agents=(("a", 2, 3), ("b", 2, 3)))
    s.plan()
    held_by_a = {k[1] for k in s.agents["a"].in_flight}
    assert s.agent_down("a") == len(held_by_a)
    again = dispatched(s.plan())
    assert again == {} or set(again) == {"b"}
    assert s.queued == len(held_by_a) - sum(len(v) for v in again.values())


def test_resubmitted_indices_are_ignored_and_end_job_frees_credit():
    s, job = make(3, agents=(("a", 1, 2),))
    assert s.add_tasks(job, [0, 1, 2], (b"", b"", b"")) == 0
    s.plan()
    assert len(s.agents["a"].in_flight) == 2
    assert s.end_job("j") == ["a"]
    assert s.agents["a"].in_flight == set() and s.queued == 0


def test_jobs_share_agents_round_robin():
    s = Scheduler()
    s.agent_up("a", 4, 4, [])
    for name in ("j1", "j2"):
        job = s.add_job(name, b"c", b"f", name, {}, 0.0)
        s.add_tasks(job, list(range(10)), tuple(b"" for _ in range(10)))
    s.max_batch = 2
    jobs = [b.job.job_id for b in s.plan()]
    assert set(jobs) == {"j1", "j2"}


def test_draining_agent_gets_nothing_and_held_tasks_count_against_credit():
    s = Scheduler()
    s.agent_up("a", 2, 2, [["old", 1, 1]])
    s.agent_up("b", 2, 2, [])
    s.agent_draining("b")
    job = s.add_job("j", b"c", b"f", "d", {}, 0.0)
    s.add_tasks(job, [0, 1, 2], (b"", b"", b""))
    assert dispatched(s.plan()) == {"a": [0]}


def test_new_leader_adopts_tasks_agents_still_hold_and_their_early_results():
    """After a failover, agents report held tasks and send results before the
    client has resubmitted: nothing held is run twice, nothing finished is lost."""
    s = Scheduler()
    s.agent_up("a", 2, 4, [["j", 0, 1], ["j", 1, 3]])
    s.on_result("a", "j", 0, 1, wire.OK, b"early")  # arrives before the client reconnects
    job = s.add_job("j", b"client", b"fn", "d", {}, 0.0)
    s.add_tasks(job, [0, 1, 2], (b"", b"", b""))
    assert job.outbox == [(0, wire.OK, b"early")]
    assert job.tasks[1].node == "a" and job.tasks[1].attempt == 3  # adopted, not queued
    assert s.queued == 1
    s.on_result("a", "j", 1, 3, wire.OK, b"held")
    assert job.outbox[-1] == (1, wire.OK, b"held")
    assert dispatched(s.plan()) == {"a": [2]}


def test_adopted_task_is_requeued_if_its_agent_dies():
    s = Scheduler()
    s.agent_up("a", 1, 2, [["j", 5, 1]])
    s.agent_up("b", 1, 2, [])
    job = s.add_job("j", b"c", b"f", "d", {}, 0.0)
    s.add_tasks(job, [5], (b"",))
    assert s.agent_down("a") == 1
    assert dispatched(s.plan()) == {"b": [5]}


def test_cancelled_tasks_leave_the_queue_and_running_ones_are_named():
    s, job = make(6, agents=(("a", 1, 2),))
    s.plan()  # 0 and 1 go to "a"
    running = s.cancel_tasks("j", [1, 3, 99])
    assert running == {"a": [1]}
    assert s.queued == 3 and len(s.agents["a"].in_flight) == 1
    assert sorted(t[0] for b in s.plan() for t in b.tasks) == [2]


def test_latencies_measure_queue_wait_and_round_trip_of_the_delivered_attempt():
    clock = [10.0]
    s = Scheduler()
    s.clock = lambda: clock[0]
    s.latencies = []
    s.agent_up("a", 1, 1, [])
    job = s.add_job("j", b"c", b"fn", "d", {}, now=0.0)
    s.add_tasks(job, [0], (b"x",))
    clock[0] = 10.5
    s.plan()
    clock[0] = 12.0
    s.on_result("a", "j", 0, 1, wire.LOST, b"")  # its worker died: retried, nothing measured yet
    clock[0] = 13.0
    s.plan()
    clock[0] = 13.25
    s.on_result("a", "j", 0, 2, wire.OK, b"r")
    assert s.latencies == [(1.0, 0.25)]  # requeued at 12.0, sent at 13.0, result at 13.25


def test_no_latencies_are_kept_when_nobody_reads_them():
    s, job = make(3)
    s.plan()
    s.on_result("a", "j", 0, 1, wire.OK, b"r")
    assert s.latencies is None


def test_a_full_fleet_is_not_scanned_again_until_credit_comes_back(monkeypatch):
    looked: list[str] = []
    free = AgentSlot.free
    monkeypatch.setattr(AgentSlot, "free", property(lambda slot: looked.append(slot.node_id) or free.fget(slot)))
    s, job = make(5000, agents=[(f"a{i}", 1, 2) for i in range(500)])
    assert sum(len(b.tasks) for b in s.plan()) == 1000  # every credit of every agent used
    looked.clear()
    assert s.plan() == []
    assert not looked, "a full fleet was scanned again with no credit back"
    # Each way credit comes back puts its agent in the running again, and only it.
    index = next(i for i, t in job.tasks.items() if t.node == "a7")
    s.on_result("a7", "j", index, 1, wire.OK, b"r")
    assert dispatched(s.plan()) == {"a7": [1000]}
    assert set(looked) == {"a7"}
    s.agent_capacity("a9", 3)
    assert list(dispatched(s.plan())) == ["a9"]
    s.cancel_tasks("j", [next(i for i, t in job.tasks.items() if t.node == "a11")])
    assert list(dispatched(s.plan())) == ["a11"]
    s.agent_up("new", 1, 2, [])
    assert list(dispatched(s.plan())) == ["new"]


def test_returned_tasks_go_back_to_the_front_in_order_without_using_a_retry():
    s, job = make(10, retries=0, agents=(("a", 2, 8), ("b", 2, 2)))
    got = dispatched(s.plan())
    assert len(got["a"]) == 8 and len(got["b"]) == 2
    returned = sorted(got["a"])[-4:]
    s.agent_capacity("a", 4)  # what the agent's ReturnTasks says first
    for index in reversed(returned):  # as the coordinator applies them: each to the front
        assert s.on_returned("a", "j", index, 1) is True
    assert s.queued == 4 + 0 and s.counters["returned"] == 4
    s.on_result("b", "j", got["b"][0], 1, wire.OK, b"r")
    (batch,) = s.plan()  # a has no credit left (4 held, capacity 4): b gets the first returned task
    assert batch.node_id == "b" and [t[0] for t in batch.tasks] == [returned[0]]
    assert batch.tasks[0][1] == 2  # a new attempt, and still runnable with retries=0
    s.on_result("b", "j", returned[0], 2, wire.OK, b"r")
    assert job.outbox[-1] == (returned[0], wire.OK, b"r")


def test_a_return_of_an_attempt_no_longer_current_changes_nothing_but_credit():
    s, job = make(1, agents=(("a", 1, 1), ("b", 1, 1)))
    s.plan()
    s.agent_down("a")
    (batch,) = s.plan()  # attempt 2 runs on b
    assert s.on_returned("a", "j", 0, 1) is False  # a's stale copy
    assert s.on_returned("b", "j", 0, 1) is False  # wrong attempt
    assert s.queued == 0 and s.agents["b"].in_flight == {("j", 0, 2)}
    assert s.on_returned("b", "j", 0, 2) is True and s.queued == 1
    assert s.on_returned("b", "j", 0, 2) is False  # twice: already queued
    assert s.on_returned("b", "j", 7, 1) is False and s.on_returned("b", "gone", 0, 1) is False


def test_a_task_returned_before_its_client_resubmits_after_a_failover_is_queued_not_adopted():
    s = Scheduler()
    s.agent_up("a", 1, 3, [["j", 0, 4], ["j", 1, 4]])  # held under the old leader
    assert s.on_returned("a", "j", 1, 4) is False  # the job is not known yet
    job = s.add_job("j", b"client", b"fn", "d", {}, now=0.0)
    s.add_tasks(job, [0, 1], (b"0", b"1"))
    assert job.tasks[0].node == "a" and not job.tasks[0].queued  # still held there: adopted
    assert job.tasks[1].queued and s.queued == 1  # given back: runs again somewhere
