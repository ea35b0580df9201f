"""The agent directory and what agents say, alone: membership, routes, relays, write-offs,
Hellos and heartbeats, with a fake clock (plain floats) and no sockets."""

from __future__ import annotations

import logging

import pytest
from helpers import agent_record

from cluster.contract import wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import RelayRecord
from cluster.coordinator.actions import Connect, Disconnect, ToAgents
from cluster.coordinator.agent_messages import AgentMessages
from cluster.coordinator.directory import HELLO_RETRY, AgentDirectory
from cluster.coordinator.relays import relay_identity
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime.membership import MemberEvent

E1, E2 = "tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000"
R = "tcp://10.0.0.9:7100"
RACK = (relay_identity("rack1"), b"")  # the route to the relay itself


def agent(node_id, endpoint=E1, started=1.0, relay="", state="ready"):
    return agent_record(node_id, endpoint=endpoint, workers=2, cores=2, started=started, state=state, relay=relay)


def relay(relay_id="rack1", endpoint=R):
    return RelayRecord(node_id=relay_id, host="h", endpoint=endpoint, version="0", protocol=1, pid=2, started=0.0)


def joined(record):
    return MemberEvent("joined", record.node_id, record)


def changed(record):
    return MemberEvent("changed", record.node_id, record)


def left(node_id):
    return MemberEvent("left", node_id, None)


class World:
    """A leading directory (epoch 1) with its scheduler, and the messages it was sent."""

    def __init__(self, **settings):
        settings.setdefault("heartbeat_interval", 0.5)
        settings.setdefault("heartbeat_misses", 4)
        self.scheduler = Scheduler(max_batch=256)
        self.directory = AgentDirectory(CoordinatorConfig(**settings), self.scheduler, "c1")
        self.dropped = []
        self.messages = AgentMessages(self.directory, lambda identity, why: self.dropped.append(identity))
        assert self.directory.elected(1, {}, {}, now=0.0) == []

    def tell(self, route, msg, now=0.0):
        """An agent's (or relay's) message, as the loop hands it over."""
        peer = self.messages.sender(route, msg, now)
        if peer is not None:
            handler = {
                wire.Welcome: self.messages.on_welcome,
                wire.Results: self.messages.on_results,
                wire.Heartbeat: self.messages.on_heartbeat,
            }[type(msg)]
            handler(peer, msg, now)

    def welcome(self, node_id, now=0.0, capacity=4):
        route = self.directory.peers[node_id].route
        self.tell(route, wire.Welcome(node_id, 1, 2, capacity, [], False), now)
        assert self.directory.peers[node_id].up

    def give_tasks(self, n=3):
        """A job of n tasks, dispatched to the agents that answer."""
        job = self.scheduler.add_job("j", b"client", b"fn", "d", {}, now=0.0)
        self.scheduler.add_tasks(job, list(range(n)), tuple(b"%d" % i for i in range(n)))
        self.scheduler.plan()
        assert self.scheduler.queued == 0
        return job


def sent(actions):
    """Actions as comparable tuples: sends decoded, one per message with its routes."""
    out = []
    for action in actions:
        if isinstance(action, ToAgents):
            out.append((wire.decode(action.frames), action.routes))
        else:
            out.append(action)
    return out


def moves(actions):
    """``sent``, without the Hellos and heartbeats."""
    return [a for a in sent(actions) if not (isinstance(a, tuple) and isinstance(a[0], (wire.Heartbeat, wire.Hello)))]


def relay_agents(connect=(), disconnect=()):
    return (wire.RelayAgents(1, [list(c) for c in connect], [list(d) for d in disconnect]), [RACK])


# ----------------------------------------------------------------- membership


def test_an_agent_is_connected_to_when_it_joins_and_disconnected_when_it_leaves():
    w = World()
    d = w.directory
    assert d.on_member(joined(agent("a1"))) == [Connect(E1)]
    assert not d.peers["a1"].up and d.route_to("a1") is None
    w.welcome("a1")
    assert d.route_to("a1") == b"a1"
    w.give_tasks(3)
    assert d.on_member(left("a1")) == [Disconnect(E1)]
    assert "a1" not in d.peers and d.records == {}
    assert w.scheduler.queued == 3  # what it held goes back to the queue
    assert d.on_member(left("a1")) == []  # told twice: nothing more


def test_an_agent_that_moves_is_dropped_and_joined_again_at_its_new_endpoint():
    w = World()
    d = w.directory
    d.on_member(joined(agent("a1")))
    w.welcome("a1")
    w.give_tasks(3)
    assert d.on_member(changed(agent("a1", endpoint=E2))) == [Disconnect(E1), Connect(E2)]
    assert w.scheduler.queued == 3 and not d.peers["a1"].up
    w.welcome("a1")
    # A change that keeps its route (draining) moves nothing; the scheduler sends it nothing new.
    assert d.on_member(changed(agent("a1", endpoint=E2, state="draining"))) == []
    assert d.peers["a1"].up and w.scheduler.agents["a1"].draining


def test_of_two_agents_at_one_endpoint_the_later_started_one_is_connected_to():
    w = World()
    d = w.directory
    d.on_member(joined(agent("old", started=1.0)))
    w.welcome("old")
    w.give_tasks(3)
    # A replacement came up where the dead one's znode still stands: the old one goes now...
    assert d.on_member(joined(agent("new", started=2.0))) == [Disconnect(E1), Connect(E1)]
    assert list(d.peers) == ["new"] and w.scheduler.queued == 3
    # ...so that its znode going later does not disconnect the new agent's endpoint.
    assert d.on_member(left("old")) == []
    assert list(d.peers) == ["new"]


def test_an_agent_started_earlier_than_the_one_at_its_endpoint_is_ignored():
    w = World()
    d = w.directory
    d.on_member(joined(agent("new", started=2.0)))
    assert d.on_member(joined(agent("old", started=1.0))) == []
    assert list(d.peers) == ["new"]
    assert d.on_member(left("old")) == [] and list(d.peers) == ["new"]


def test_an_agent_behind_a_relay_claims_no_endpoint():
    """Endpoints behind different relays, or behind one and reached directly, are
    different machines (private address ranges repeat across racks)."""
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("d1", started=1.0)))
    d.on_member(joined(agent("r1", started=2.0, relay="rack1")))
    assert set(d.peers) == {"d1", "r1"}
    assert sent(d.on_member(left("r1"))) == [relay_agents(disconnect=[("r1", E1)])]  # d1 stays connected
    assert d.on_member(left("d1")) == [Disconnect(E1)]


def test_a_new_lead_starts_from_zookeepers_view_and_stepping_down_forgets_it():
    scheduler = Scheduler()
    d = AgentDirectory(CoordinatorConfig(), scheduler, "c1")
    actions = d.elected(
        7, {"rack1": relay()}, {"r1": agent("r1", relay="rack1"), "d1": agent("d1", endpoint=E2)}, now=0.0
    )
    connect = wire.RelayAgents(7, [["r1", E1]], [])
    assert sent(actions) == [Connect(R), (connect, [RACK]), Connect(E2)]
    assert d.epoch == 7 and d.peers["r1"].route == (relay_identity("rack1"), b"r1")
    disconnect = wire.RelayAgents(7, [], [["r1", E1]])
    assert sent(d.step_down()) == [(disconnect, [RACK]), Disconnect(E2), Disconnect(R)]
    assert d.peers == {} and d.records == {} and d.relays.records == {}


# --------------------------------------------------------------------- relays


def test_agents_move_behind_their_relay_when_it_joins_and_back_when_it_leaves():
    w = World()
    d = w.directory
    assert d.on_member(joined(agent("r1", relay="rack1"))) == [Connect(E1)]  # no relay yet: directly
    w.welcome("r1")
    w.give_tasks(3)
    actions = d.on_relay(joined(relay()), now=1.0)
    assert sent(actions) == [Connect(R), Disconnect(E1), relay_agents(connect=[("r1", E1)])]
    assert d.peers["r1"].via == "rack1" and w.scheduler.queued == 3  # a move is a leave and a join
    assert d.on_relay(left("rack1"), now=2.0) == [Disconnect(R), Connect(E1)]
    assert d.peers["r1"].via == ""


def test_an_agent_that_names_a_registered_relay_is_reached_through_it():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    assert sent(d.on_member(joined(agent("r1", relay="rack1")))) == [relay_agents(connect=[("r1", E1)])]
    w.welcome("r1")
    assert d.route_to("r1") == (relay_identity("rack1"), b"r1")
    assert sent(d.on_member(left("r1"))) == [relay_agents(disconnect=[("r1", E1)])]


def test_a_silent_relay_is_bypassed_until_it_answers_again():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    w.welcome("r1")
    w.tell(RACK, wire.RelayBeat(1, ["r1"]), now=1.9)  # the relay answers, and vouches for r1
    assert moves(d.tick(3.8)) == []  # silent 1.9 s of 2.0
    assert moves(d.tick(4.0)) == [relay_agents(disconnect=[("r1", E1)]), Connect(E1)]
    assert d.relays.bypassed("rack1") and d.peers["r1"].via == ""
    w.tell(RACK, wire.RelayBeat(1, []), now=4.5)
    back = relay_agents(connect=[("r1", E1)])
    assert moves(d.tick(4.6)) == [Disconnect(E1), back, back]  # the second goes with its Hello
    assert not d.relays.bypassed("rack1") and d.peers["r1"].via == "rack1"


def test_a_relay_whose_connection_closes_is_bypassed_at_once(caplog):
    caplog.set_level(logging.WARNING, logger="cluster.coordinator")
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    assert sent(d.on_closed([R])) == [relay_agents(disconnect=[("r1", E1)]), Connect(E1)]
    assert d.relays.bypassed("rack1") and d.peers["r1"].via == ""
    assert d.on_closed([R]) == []  # already bypassed
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # said once


def test_a_relays_heartbeat_is_each_of_its_agents_heartbeat():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    d.on_member(joined(agent("d1", endpoint=E2)))
    w.welcome("r1")
    w.welcome("d1")
    w.tell(RACK, wire.RelayBeat(1, ["r1", "d1"]), now=1.5)  # d1 is not behind rack1: not vouched for
    assert d.liveness.age("r1", 2.0) == 0.5 and d.liveness.age("d1", 2.0) == 2.0
    w.tell(RACK, wire.RelayBeat(0, ["r1"]), now=1.9)  # an older lead's: ignored
    assert d.liveness.age("r1", 2.0) == 0.5


# ----------------------------------------------------------------- write-offs


def write_off_closed(w):
    return w.directory.on_closed([E1])


def write_off_silent(w):
    w.tell(b"a1", wire.Heartbeat("a1", 1), now=1.5)
    w.tell(b"a2", wire.Heartbeat("a2", 1), now=3.0)
    w.directory.tick(3.4)
    assert w.directory.peers["a1"].up  # heard 1.9 s ago: a deadline is 2.0 s
    return w.directory.tick(3.6)


def write_off_unreachable(w):
    w.directory.write_off("a1", "unreachable (a dispatch could not be sent)", "unreachable")
    return []


@pytest.mark.parametrize(
    "write_off, cause",
    [(write_off_closed, "closed"), (write_off_silent, "silent"), (write_off_unreachable, "unreachable")],
)
def test_an_agent_written_off_gives_back_its_tasks_and_stays_registered(write_off, cause):
    w = World()
    d = w.directory
    d.on_member(joined(agent("a1")))
    d.on_member(joined(agent("a2", endpoint=E2)))
    w.welcome("a1")
    w.welcome("a2", capacity=0)  # holds nothing
    w.give_tasks(3)
    write_off(w)
    assert w.scheduler.queued == 3 and "a1" not in w.scheduler.agents
    assert d.written_off == {cause: 1} and d.peers["a1"].written_off == {cause: 1}
    assert not d.peers["a1"].up and "a1" not in d.liveness and d.route_to("a1") is None
    assert d.peers["a2"].up and d.peers["a2"].written_off == {}
    d.write_off("a1", "again", cause)  # already written off: not counted twice
    assert d.written_off == {cause: 1}
    # It stays registered and is greeted until it answers; then it is taken back.
    w.tell(b"a2", wire.Heartbeat("a2", 1), now=9.9)
    hellos = [routes for msg, routes in sent(d.tick(10.0)) if isinstance(msg, wire.Hello)]
    assert hellos == [[b"a1"]]
    w.welcome("a1", now=10.0)
    assert "a1" in w.scheduler.agents


def test_an_agent_whose_connection_to_its_relay_closed_is_written_off_as_closed():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    d.on_member(joined(agent("d1", endpoint=E2)))
    w.welcome("r1")
    w.welcome("d1")
    w.give_tasks(3)
    w.tell(RACK, wire.RelayBeat(1, [], lost=["r1", "d1"]), now=0.5)  # d1 is not the relay's to report
    assert d.written_off == {"closed": 1} and not d.peers["r1"].up and d.peers["d1"].up
    assert "r1" not in w.scheduler.agents


def test_a_closed_connection_nobody_is_at_changes_nothing():
    w = World()
    w.directory.on_member(joined(agent("a1")))
    w.welcome("a1")
    assert w.directory.on_closed([E2]) == [] and w.directory.written_off == {}


# ------------------------------------------------------- Hellos and heartbeats


def test_hello_is_repeated_until_the_agent_answers_then_heartbeats_follow():
    w = World()
    d = w.directory
    d.on_member(joined(agent("a1")))
    hello = wire.Hello("c1", 1, 0.5, takes_back=True, takes_output=True, takes_load_failures=True)
    assert sent(d.tick(0.0)) == [(hello, [b"a1"])]
    assert d.tick(0.1) == []  # the retry is not due yet
    assert sent(d.tick(HELLO_RETRY)) == [(hello, [b"a1"])]
    w.welcome("a1", now=0.3)
    assert d.tick(0.4) == []
    assert sent(d.tick(0.5)) == [(wire.Heartbeat("c1", 1, 0, 0.5), [b"a1"])]
    assert d.tick(0.9) == []  # heartbeats go every interval, not every tick


def test_a_relay_is_told_to_connect_to_an_agent_with_each_hello_until_it_answers():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    route = (relay_identity("rack1"), b"r1")
    hello = wire.Hello("c1", 1, 0.5, takes_back=True, takes_output=True, takes_load_failures=True)
    beat = wire.Heartbeat("c1", 1, 0, 0.5)
    assert sent(d.tick(0.0)) == [(beat, [RACK]), relay_agents(connect=[("r1", E1)]), (hello, [route])]
    assert sent(d.tick(HELLO_RETRY)) == [relay_agents(connect=[("r1", E1)]), (hello, [route])]
    w.welcome("r1", now=0.3)
    # The relay gets the heartbeat and passes it on: the agent gets none of its own.
    assert sent(d.tick(0.5)) == [(beat, [RACK])]


def test_heartbeats_stretch_with_the_fleet_and_so_does_the_deadline():
    w = World(heartbeat_budget=4.0)  # 4 heartbeats a second: 3 agents beat every 0.75 s
    d = w.directory
    for i, endpoint in enumerate((E1, E2, "tcp://10.0.0.3:7000")):
        d.on_member(joined(agent(f"a{i}", endpoint=endpoint)))
        w.welcome(f"a{i}")
    (beat,) = sent(d.tick(0.0))
    assert beat == (wire.Heartbeat("c1", 1, 0, 0.75), [b"a0", b"a1", b"a2"])  # the agents follow it
    assert d.beats.interval == 0.75 and d.tick(0.6) == []
    assert sent(d.tick(0.75))[0][1] == [b"a0", b"a1", b"a2"]
    d.tick(2.5)  # silent 2.5 s: lost at 0.5 s x 4, not at 0.75 s x 4
    assert d.written_off == {}
    d.tick(3.1)
    assert d.written_off == {"silent": 3}


# -------------------------------------------------------------- agent messages


def test_results_from_an_agent_not_registered_are_still_taken():
    w = World()
    job = w.scheduler.add_job("j", b"client", b"fn", "d", {}, now=0.0)
    w.scheduler.add_tasks(job, [0], (b"0",))
    w.tell(b"gone", wire.Results(1, [["j", 0, 1, wire.OK]], frames=(b"r",)))
    assert job.outbox == [(0, wire.OK, b"r")] and w.dropped == []


def test_other_messages_from_strangers_or_by_the_wrong_route_are_dropped():
    w = World()
    d = w.directory
    d.on_relay(joined(relay()), now=0.0)
    d.on_member(joined(agent("r1", relay="rack1")))
    w.tell(b"stranger", wire.Heartbeat("stranger", 1))
    w.tell(b"r1", wire.Welcome("r1", 1, 2, 4, [], False))  # r1 is reached through rack1, not directly
    assert w.dropped == [b"stranger", b"r1"] and not d.peers["r1"].up


def test_a_welcome_for_another_epoch_is_ignored():
    w = World()
    w.directory.on_member(joined(agent("a1")))
    w.tell(b"a1", wire.Welcome("a1", 0, 2, 4, [], False))
    assert not w.directory.peers["a1"].up and "a1" not in w.scheduler.agents
