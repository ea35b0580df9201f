"""The client front alone: job admission, windows, payload limits, cancels, the client
time-out and result delivery, with a fake clock (plain floats) and no sockets."""

from __future__ import annotations

from helpers import agent_record

from cluster.contract import payload, wire
from cluster.contract.config import CoordinatorConfig
from cluster.coordinator.actions import ToAgents, ToClient
from cluster.coordinator.directory import AgentDirectory
from cluster.coordinator.front import ClientFront
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime.membership import MemberEvent

CLIENT = b"client-1"


class World:
    """A leading front (epoch 3) with one agent, a1 (2 workers, capacity 4), that answers."""

    def __init__(self, **settings):
        cfg = CoordinatorConfig(**settings)
        self.scheduler = Scheduler(max_batch=cfg.max_batch)
        self.directory = AgentDirectory(cfg, self.scheduler, "c1")
        self.directory.elected(3, {}, {}, now=0.0)
        self.dropped = []
        self.front = ClientFront(cfg, self.scheduler, self.directory, "c1", lambda i, why: self.dropped.append(why))
        record = agent_record("a1", endpoint="tcp://10.0.0.1:7000", workers=2, cores=2)
        self.directory.on_member(MemberEvent("joined", "a1", record))
        self.directory.peers["a1"].up = True
        self.scheduler.agent_up("a1", 2, 4, [])

    def submit(self, job_id="j", function=b"fn", now=0.0, **options):
        return self.front.on_submit_job(CLIENT, wire.SubmitJob(job_id, "digest", options, frames=(function,)), now)

    def tasks(self, indices, job_id="j", now=0.0, size=1):
        msg = wire.SubmitTasks(job_id, list(indices), frames=tuple(b"x" * size for _ in indices))
        return self.front.on_submit_tasks(CLIENT, msg, now)


def to_agents(actions):
    return [(wire.decode(a.frames), a.routes) for a in actions if isinstance(a, ToAgents)]


def test_a_job_is_accepted_with_its_window_and_the_workers_there_are():
    w = World(job_window=100, max_payload=1000)
    assert w.submit(window=10) == [ToClient(wire.JobAccepted("j", 10, 2, 3, 1000), CLIENT)]
    assert w.scheduler.jobs["j"].options["max_payload"] == 1000  # workers check results against it
    (reply,) = w.submit("k", window=500)  # asks for more than the coordinator allows
    assert reply.message.window == 100
    (reply,) = w.submit("l", window="a lot")
    assert reply.message.window == 100


def test_a_function_larger_than_the_payload_limit_fails_its_job():
    w = World(max_payload=10)
    (reply,) = w.submit(function=b"f" * 11)
    assert reply.message.code == wire.JobFailure.TOO_LARGE and "limit" in reply.message.reason
    assert w.scheduler.jobs == {}
    (reply,) = w.submit(function=b"f" * 10)
    assert isinstance(reply.message, wire.JobAccepted)


def test_tasks_beyond_the_window_fail_the_job_and_count_as_dropped():
    w = World()
    w.submit(window=3)
    assert w.tasks([0, 1]) == ()
    (reply,) = w.tasks([2, 3])
    assert reply == ToClient(wire.JobFailed("j", "window exceeded", wire.JobFailure.WINDOW_EXCEEDED), CLIENT)
    assert len(w.scheduler.jobs["j"].tasks) == 2 and w.dropped == ["job j exceeds its window of 3 tasks"]
    assert w.tasks([2]) == ()  # up to the window is fine
    assert len(w.scheduler.jobs["j"].tasks) == 3


def test_arguments_larger_than_the_payload_limit_fail_only_their_task():
    w = World(max_payload=100)
    w.submit()
    msg = wire.SubmitTasks("j", [0, 1, 2], frames=(b"a", b"b" * 101, b"c"))
    assert w.front.on_submit_tasks(CLIENT, msg, 0.0) == ()
    job = w.scheduler.jobs["j"]
    assert sorted(job.tasks) == [0, 2] and w.scheduler.queued == 2
    ((index, status, frame),) = job.outbox
    assert (index, status) == (1, wire.ERROR)
    assert payload.load_error(frame)["type"] == "PayloadTooLarge"


def test_tasks_of_a_job_the_coordinator_does_not_know_are_refused():
    w = World()
    (reply,) = w.tasks([0], job_id="nope")
    assert reply.message.code == wire.JobFailure.UNKNOWN_JOB and w.scheduler.queued == 0


def test_cancelling_a_job_tells_the_agents_that_have_its_function():
    w = World()
    w.submit()
    w.tasks(range(3))
    w.scheduler.plan()  # a1 has the job now
    assert to_agents(w.front.on_cancel_job(CLIENT, wire.CancelJob("j"), 1.0)) == [(wire.EndJob(3, "j"), [b"a1"])]
    assert w.scheduler.jobs == {}
    w.submit("k")
    w.tasks(range(3), job_id="k")
    w.scheduler.plan()
    w.directory.write_off("a1", "silent", "silent")  # no route to it: nothing to tell
    assert w.front.on_cancel_job(CLIENT, wire.CancelJob("k"), 1.0) == ()


def test_cancelled_tasks_are_dropped_where_they_run():
    w = World()
    w.submit()
    w.tasks(range(6))
    w.scheduler.plan()  # 0-3 on a1 (its capacity), 4 and 5 queued
    actions = w.front.on_cancel_tasks(CLIENT, wire.CancelTasks("j", [1, 5]), 1.0)
    assert to_agents(actions) == [(wire.DropTasks(3, "j", [1]), [b"a1"])]
    assert w.scheduler.queued == 1 and sorted(w.scheduler.jobs["j"].tasks) == [0, 2, 3, 4]


def test_a_job_whose_client_falls_silent_is_cancelled_after_the_client_timeout():
    w = World(client_timeout=30.0)
    w.submit(now=0.0)
    w.tasks(range(3), now=0.0)
    w.scheduler.plan()
    w.submit("other", now=0.0)
    (beat,) = w.front.on_heartbeat(CLIENT, wire.Heartbeat("client", 0), 20.0)  # keeps both jobs alive
    assert beat == ToClient(wire.Heartbeat("c1", 3, agents=1), CLIENT)
    assert w.front.tick(49.9) == [] and set(w.scheduler.jobs) == {"j", "other"}
    assert to_agents(w.front.tick(50.1)) == [(wire.EndJob(3, "j"), [b"a1"])]
    assert w.scheduler.jobs == {} and w.front.counters["clients_timed_out"] == 2


def test_tasks_keep_their_clients_job_alive():
    w = World(client_timeout=30.0)
    w.submit(now=0.0)
    w.tasks([0], now=25.0)
    assert w.front.tick(50.0) == [] and "j" in w.scheduler.jobs


def test_results_go_to_each_client_in_batches_and_a_failed_send_keeps_them():
    w = World(max_batch=2)
    w.submit()
    job = w.scheduler.jobs["j"]
    job.outbox.extend((i, wire.OK, b"r%d" % i) for i in range(5))
    sent = []
    w.front.deliver(lambda msg, client: sent.append((msg, client)) or len(sent) < 2)
    assert [(m.items, m.frames, c) for m, c in sent] == [
        ([[0, wire.OK], [1, wire.OK]], (b"r0", b"r1"), CLIENT),
        ([[2, wire.OK], [3, wire.OK]], (b"r2", b"r3"), CLIENT),  # not sent: kept
    ]
    assert [i for i, _, _ in job.outbox] == [2, 3, 4]
    sent.clear()
    w.front.deliver(lambda msg, client: sent.append(msg) or True)
    assert [m.items for m in sent] == [[[2, wire.OK], [3, wire.OK]], [[4, wire.OK]]] and job.outbox == []


def test_stepping_down_forgets_every_job():
    w = World()
    w.submit()
    w.tasks(range(3))
    w.front.step_down()
    assert w.scheduler.jobs == {} and w.scheduler.queued == 0


def test_task_output_goes_to_a_client_that_asked_for_it_of_the_attempt_running_now():
    w = World()
    w.submit(output=True)
    w.tasks([0, 1])
    ((index, attempt, _),) = [t for batch in w.scheduler.plan() for t in batch.tasks if t[0] == 0]
    out = wire.TaskOutput("j", 0, attempt, "out", frames=(b"a line\n",))
    assert w.front.on_task_output("a1", out) == [ToClient(out, CLIENT)]  # forwarded as it came
    stale = wire.TaskOutput("j", 0, attempt - 1, "out", frames=(b"x\n",))
    assert w.front.on_task_output("a1", stale) == ()  # of an earlier attempt
    assert w.front.on_task_output("a2", out) == ()  # from an agent the task does not run on
    w.scheduler.on_result("a1", "j", 0, attempt, wire.OK, b"r")
    assert w.front.on_task_output("a1", out) == ()  # the task is done
    assert w.front.on_task_output("a1", wire.TaskOutput("nope", 1, 1, "err", frames=(b"x",))) == ()
    w.submit("k")  # a client of an earlier release: never sent a kind it does not know
    w.tasks([0], job_id="k")
    ((index, attempt, _),) = [t for batch in w.scheduler.plan() for t in batch.tasks if batch.job.job_id == "k"]
    assert w.front.on_task_output("a1", wire.TaskOutput("k", index, attempt, "out", frames=(b"x\n",))) == ()


def load_failed(node: str, job_id: str = "j") -> wire.LoadFailed:
    return wire.LoadFailed(job_id, node, "ModuleNotFoundError", "No module named 'x'", "", 3)


def test_a_node_that_cannot_load_a_function_is_told_to_drop_it_and_its_client_hears_once():
    w = World()
    record = agent_record("a2", endpoint="tcp://10.0.0.2:7000", workers=2, cores=2)
    w.directory.on_member(MemberEvent("joined", "a2", record))
    w.directory.peers["a2"].up = True
    w.scheduler.agent_up("a2", 2, 4, [])
    w.submit(takes_load_failures=True)
    w.tasks(range(8))
    w.scheduler.plan()
    actions = w.front.on_load_failed("a1", load_failed("a1"), 1.0)
    assert to_agents(actions) == [(wire.EndJob(3, "j"), [w.directory.route_to("a1")])]
    told = [a.message for a in actions if isinstance(a, ToClient)]
    assert told == [wire.LoadFailed("j", "a1", "ModuleNotFoundError", "No module named 'x'", "")]
    # Said again (a late report, or one of another connection): the agent drops it again, the client hears nothing.
    again = w.front.on_load_failed("a1", load_failed("a1"), 1.0)
    assert not [a for a in again if isinstance(a, ToClient)] and "j" in w.scheduler.jobs
    assert all(batch.node_id == "a2" for batch in w.scheduler.plan())


def test_a_job_no_node_can_load_fails_at_once_with_every_nodes_error():
    w = World()
    w.submit(takes_load_failures=True)
    w.tasks(range(8))
    w.scheduler.plan()
    actions = w.front.on_load_failed("a1", load_failed("a1"), 1.0)
    (failed,) = [a.message for a in actions if isinstance(a, ToClient)]
    assert failed.code == wire.JobFailure.LOAD_FAILED
    assert failed.errors == [["a1", "ModuleNotFoundError", "No module named 'x'", ""]]
    assert "No module named 'x' (on a1)" in failed.reason
    assert w.scheduler.jobs == {} and w.scheduler.refusing == 0 and w.scheduler.queued == 0


def test_a_registered_node_not_connected_yet_keeps_a_refused_job_waiting_for_it():
    w = World()
    record = agent_record("late", endpoint="tcp://10.0.0.3:7000", workers=2, cores=2)
    w.directory.on_member(MemberEvent("joined", "late", record))  # registered; no Welcome yet
    w.submit(takes_load_failures=True)
    w.tasks(range(2))
    w.scheduler.plan()
    assert [a.message for a in w.front.on_load_failed("a1", load_failed("a1"), 1.0) if isinstance(a, ToClient)] == [
        wire.LoadFailed("j", "a1", "ModuleNotFoundError", "No module named 'x'", "")
    ]
    assert w.front.tick(2.0) == []  # it may have the module
    w.directory.on_member(MemberEvent("left", "late", None))
    (failed,) = [a.message for a in w.front.tick(3.0) if isinstance(a, ToClient)]
    assert failed.code == wire.JobFailure.LOAD_FAILED and w.scheduler.jobs == {}


def test_a_client_of_an_earlier_release_gets_each_task_failed_with_the_load_error():
    w = World()
    w.submit()  # no takes_load_failures: it knows no LOAD_FAILED
    w.tasks(range(3))
    w.scheduler.plan()
    assert not [a for a in w.front.on_load_failed("a1", load_failed("a1"), 1.0) if isinstance(a, ToClient)]
    job = w.scheduler.jobs["j"]
    assert [(i, s) for i, s, _ in job.outbox] == [(0, wire.ERROR), (1, wire.ERROR), (2, wire.ERROR)]
    assert payload.load_error(job.outbox[0][2])["message"] == "No module named 'x' (on a1)"
    w.tasks(range(3, 5), now=2.0)  # what it sends later fails at the next tick
    w.front.tick(2.0)
    assert [i for i, _, _ in job.outbox] == [0, 1, 2, 3, 4] and not job.tasks
