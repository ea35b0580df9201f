"""An agent's session with its coordinators (agents/session.py) on a given clock: fencing,
the leader's liveness, the heartbeat interval it asks for, and the results held for it."""

from __future__ import annotations

import collections
import logging

import pytest

from agents.local_queue import QueuedTask
from agents.session import FLUSH_DELAY, MAX_RESULTS_PER_MESSAGE, CoordinatorSession
from cluster.contract import wire

OLD, NEW = b"coordinator-old", b"coordinator-new"
INTERVAL, MISSES = 0.5, 4


def session(workers: int = 2) -> CoordinatorSession:
    return CoordinatorSession("n1", workers, interval=INTERVAL, misses=MISSES, counters=collections.Counter())


def hello(
    s: CoordinatorSession,
    identity: bytes,
    epoch: int,
    now: float = 0.0,
    *,
    interval: float = INTERVAL,
    capacity: int = 6,
    takes_back: bool = False,
) -> wire.Message:
    """What the session answers a Hello with, as the agent's loop drives it."""
    msg = wire.Hello(identity.decode(), epoch, interval, takes_back)
    act, answer = s.admit(identity, msg, now)
    if act:
        return s.hello(identity, msg, now, capacity, [["queued", 0, 1]])
    assert answer is not None
    return answer


def heard(s: CoordinatorSession, identity: bytes, now: float, interval: float = 0.0) -> None:
    """A coordinator's heartbeat, as the agent's loop hands it on."""
    msg = wire.Heartbeat(identity.decode(), s.max_epoch, interval=interval)
    if s.admit(identity, msg, now)[0]:
        s.on_heartbeat(identity, msg, now)


def results(s: CoordinatorSession, count: int) -> None:
    s.outbox.extend((("j", i, 1), wire.OK, b"r%d" % i) for i in range(count))


def test_hello_makes_the_leader_and_the_welcome_lists_what_is_held():
    s = session()
    results(s, 1)
    welcome = hello(s, NEW, 3, takes_back=True)
    assert isinstance(welcome, wire.Welcome)
    assert (welcome.node_id, welcome.epoch, welcome.workers, welcome.capacity) == ("n1", 3, 2, 6)
    assert welcome.held == [["queued", 0, 1], ["j", 0, 1]] and not welcome.draining
    assert (s.leader, s.max_epoch, s.takes_back, s.announced) == (NEW, 3, True, 6)


def test_a_deposed_coordinator_is_fenced_counted_and_its_hello_refused(caplog):
    s = session()
    hello(s, NEW, 5)
    with caplog.at_level(logging.WARNING, logger="agents.agent"):
        for _ in range(3):
            assert s.admit(OLD, wire.Dispatch(4, "j", [[0, 1]], frames=(b"x",)), 1.0) == (False, None)
        refused = hello(s, OLD, 4)
    assert isinstance(refused, wire.Refused) and refused.code == wire.Refusal.FENCED
    assert refused.reason == "epoch 4 is older than 5"
    assert s.counters["fenced_messages"] == 4
    assert (s.leader, s.max_epoch) == (NEW, 5)  # the deposed one took nothing over
    # One warning per coordinator and epoch, however many messages.
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert s.admit(NEW, wire.Dispatch(5, "j", [[0, 1]], frames=(b"x",)), 1.0) == (True, None)
    assert s.admit(OLD, wire.Draining("x"), 1.0) == (True, None)  # no epoch: nothing to fence on


def test_a_newer_coordinator_takes_over_and_the_old_one_is_fenced_from_then_on():
    s = session()
    hello(s, OLD, 4)
    assert isinstance(hello(s, NEW, 5), wire.Welcome)
    assert s.leader == NEW
    assert s.admit(OLD, wire.Heartbeat("old", 4), 1.0)[0] is False


def test_a_silent_leader_is_forgotten_after_interval_times_misses_and_results_are_held():
    s = session()
    hello(s, NEW, 1, now=0.0)
    assert s.heartbeat(0.0, free=3) == wire.Heartbeat("n1", 1, 3)
    deadline = INTERVAL * MISSES
    assert s.heartbeat(deadline, free=3) is not None  # silent exactly that long: still alive
    results(s, 2)
    assert s.heartbeat(deadline + INTERVAL, free=3) is None  # silent longer: gone
    assert s.leader is None
    assert not s.results_due(deadline + INTERVAL, queued=0) and len(s.outbox) == 2  # held for the next leader
    assert s.heartbeat(deadline + 2 * INTERVAL, free=3) is None  # nobody to beat to
    welcome = hello(s, NEW, 2, now=deadline + 2 * INTERVAL)
    assert welcome.held[-2:] == [["j", 0, 1], ["j", 1, 1]]  # the new leader hears of them
    assert s.results_due(deadline + 2 * INTERVAL, queued=0)


def test_any_message_from_the_leader_proves_it_alive():
    s = session()
    hello(s, NEW, 1, now=0.0)
    s.heartbeat(0.0, free=0)
    s.admit(NEW, wire.Dispatch(1, "j", [[0, 1]], frames=(b"x",)), 1.9)  # not a heartbeat, still a sign of life
    assert s.heartbeat(3.0, free=0) is not None and s.leader == NEW
    assert s.heartbeat(3.9 + INTERVAL, free=0) is None and s.leader is None


def test_heartbeats_follow_the_interval_the_leader_asks_for():
    s = session()
    hello(s, NEW, 1, now=0.0, interval=1.0)
    assert s.interval == 1.0
    assert s.heartbeat(0.0, free=0) is not None
    assert s.heartbeat(0.9, free=0) is None  # not due yet
    assert s.heartbeat(1.0, free=0) is not None and s.next_beat == 2.0
    heard(s, OLD, 1.2, interval=0.25)
    assert s.interval == 1.0  # only the leader sets it
    heard(s, NEW, 1.2, interval=0.25)
    assert s.interval == 0.25 and s.next_beat == pytest.approx(1.45)  # a shorter interval is due sooner, at once
    assert s.heartbeat(1.45, free=0) is not None and s.next_beat == pytest.approx(1.7)
    heard(s, NEW, 1.5, interval=2.0)
    assert s.interval == 2.0 and s.next_beat == pytest.approx(1.7)  # a longer one from the next beat on
    assert s.liveness.deadline == 2.0 * MISSES  # and the leader is judged by it
    heard(s, NEW, 1.6)  # interval 0: unchanged
    assert s.interval == 2.0


def test_results_wait_at_most_the_flush_delay_and_only_while_workers_have_queued_work():
    s = session(workers=2)
    hello(s, NEW, 1)
    assert not s.results_due(0.0, queued=5) and s.flush_at is None  # nothing held: no early wake-up
    results(s, 1)
    assert not s.results_due(10.0, queued=2)  # both workers have a task to go on with: wait
    assert s.flush_at == 10.0 + FLUSH_DELAY
    assert not s.results_due(10.0 + FLUSH_DELAY / 2, queued=2)
    assert s.results_due(10.0 + FLUSH_DELAY, queued=2) and s.flush_at is None
    assert s.results_due(20.0, queued=1)  # a worker is about to run dry: at once
    results(s, MAX_RESULTS_PER_MESSAGE - 1)
    assert s.results_due(30.0, queued=100)  # a full message: at once
    s.outbox[:] = s.outbox[:1]
    s.drain()
    assert s.results_due(40.0, queued=100)  # draining: at once


def test_results_go_in_full_messages_that_carry_a_changed_capacity_once():
    s = session()
    hello(s, NEW, 7, capacity=6)
    results(s, MAX_RESULTS_PER_MESSAGE + 10)
    first = s.results(34)
    assert first.epoch == 7 and first.capacity == 34 and len(first.items) == MAX_RESULTS_PER_MESSAGE
    assert first.items[0] == ["j", 0, 1, wire.OK] and first.frames[0] == b"r0"
    assert s.results(34) == first  # not sent yet: the same again
    s.sent(first)
    second = s.results(34)
    assert second.capacity == 0 and [i[1] for i in second.items] == list(range(256, 266))  # the leader knows 34
    s.sent(second)
    assert s.results(34) is None and not s.outbox


def test_tasks_given_back_and_a_shrunk_capacity_are_told_to_the_leader():
    s = session()
    hello(s, NEW, 2, capacity=34)
    assert s.give_back((), 34) is None
    assert s.give_back((), 40) is None  # a capacity that grew goes with the next results
    back = s.give_back([QueuedTask("j", 3, 1, b""), QueuedTask("j", 4, 2, b"")], 6)
    assert back == wire.ReturnTasks(2, [["j", 3, 1], ["j", 4, 2]], 6)
    shrunk = s.give_back((), 6)
    assert shrunk == wire.Results(2, [], 6)
    s.sent(shrunk)
    assert s.announced == 6 and s.give_back((), 6) is None


def test_a_dispatch_for_an_unknown_job_is_answered_lost_and_cancelled_results_are_dropped():
    s = session()
    s.no_function(wire.Dispatch(1, "nofn", [[0, 1], [1, 2]], frames=(b"a", b"b")))
    assert [(key, status) for key, status, _ in s.outbox] == [(("nofn", 0, 1), wire.LOST), (("nofn", 1, 2), wire.LOST)]
    results(s, 3)
    outbox = s.outbox
    s.drop(lambda job_id, index: job_id == "j" and index != 1)
    assert [key for key, _, _ in s.outbox] == [("nofn", 0, 1), ("nofn", 1, 2), ("j", 1, 1)]
    assert s.outbox is outbox  # the agent may hold on to the list


@pytest.mark.parametrize("leader", [True, False])
def test_draining_is_told_to_the_leader_and_in_every_welcome(leader):
    s = session()
    if leader:
        hello(s, NEW, 1)
    notice = s.drain()
    assert notice == (wire.Draining("n1") if leader else None)
    assert hello(s, NEW, 2).draining


def test_started_tasks_go_with_the_results_by_the_same_rule_and_are_told_once():
    s = session(workers=2)
    hello(s, NEW, 3)
    s.started.append(("j", 5, 1))
    assert not s.results_due(10.0, queued=4)  # held like a result, FLUSH_DELAY at most
    assert s.results_due(10.0 + FLUSH_DELAY, queued=4)
    results(s, 2)
    msg = s.results(6)
    assert msg.started == [["j", 5, 1]] and len(msg.items) == 2
    s.started.append(("j", 6, 1))  # found while the message was on its way
    s.sent(msg)
    assert s.started == [("j", 6, 1)] and not s.outbox
    s.drop(lambda job_id, index: index == 6)  # cancelled: its start is news for nobody
    assert s.results(6) is None
