"""Heartbeat liveness and the interval a coordinator stretches for large fleets
(cluster/contract/liveness.py): pure, so time is passed in, never slept."""

from __future__ import annotations

from cluster.contract.liveness import BeatInterval, Liveness


def test_a_peer_silent_past_interval_times_misses_is_reported_once():
    live = Liveness(0.5, 4)
    live.beat("a", 0.0)
    live.beat("b", 1.5)
    assert live.expired(2.0) == []
    assert live.expired(2.01) == ["a"]
    assert live.expired(9.0) == ["b"]
    assert live.expired(20.0) == [] and "a" not in live


def test_a_longer_interval_gives_peers_longer():
    live = Liveness(0.5, 4)
    live.beat("a", 0.0)
    live.set_interval(1.25)
    assert live.expired(4.9) == []
    assert live.expired(5.1) == ["a"]


def test_the_interval_stretches_with_the_fleet_in_steps():
    beats = BeatInterval(0.5, 4000, 4)
    assert [beats.wanted(n) for n in (0, 10, 2000, 2001, 5000, 10_000)] == [0.5, 0.5, 0.5, 0.75, 1.25, 2.5]
    assert beats.update(10, 0.0) is False and beats.interval == 0.5
    assert beats.update(5000, 1.0) is True and beats.interval == 1.25
    assert beats.deadline(1.0) == 5.0  # agents beating faster until they hear of it are early, never late


def test_a_budget_of_zero_never_stretches():
    beats = BeatInterval(0.5, 0, 4)
    assert beats.update(100_000, 0.0) is False and beats.interval == 0.5


def test_a_fleet_at_a_steps_edge_does_not_flap():
    beats = BeatInterval(0.5, 4000, 4)
    beats.update(2001, 0.0)
    assert beats.interval == 0.75
    # Back to 2,000 and a little below: within 10% of the step, the interval stays.
    assert beats.update(2000, 1.0) is False and beats.update(1850, 2.0) is False and beats.interval == 0.75
    assert beats.update(1800, 3.0) is True and beats.interval == 0.5


def test_a_shorter_interval_counts_against_agents_only_one_old_deadline_later():
    beats = BeatInterval(0.5, 4000, 4)
    beats.update(10_000, 0.0)  # 2.5 s: a deadline of 10 s
    beats.update(10, 100.0)
    assert beats.interval == 0.5
    # Agents beat every 2.5 s until the coordinator's next message reaches them.
    assert beats.deadline(100.0) == 10.0 and beats.deadline(109.9) == 10.0
    assert beats.deadline(110.1) == 2.0


def test_shrinking_twice_keeps_the_slowest_pace_agents_may_still_beat_at():
    beats = BeatInterval(0.5, 4000, 4)
    beats.update(10_000, 0.0)  # 2.5 s
    beats.update(4000, 100.0)  # 1.25 s (within 10% of the 1.0 s step); agents may beat at 2.5 s for 10 s
    beats.update(10, 101.0)  # 0.5 s, one second later: some agents may still beat every 2.5 s
    assert beats.interval == 0.5
    assert beats.deadline(105.0) == 10.0
    assert beats.deadline(111.1) == 2.0
