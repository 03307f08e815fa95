"""The fault checker's resources without etcd: the counting resource a semaphore protects (how many holders
act at once, online and recomputed from its log) and the interleaving rule for an election's leaders.

A holder acts from its entry to its last accepted write; the counting resource refuses a write that would
make more than `limit` holders act at once, and `over_limit` must find the same from the log alone (it is
what the checker trusts when the resource's own enforcement is off).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from etcdlock._chaos.resource import (
    Acting,
    CountingResource,
    FencedResource,
    Write,
    crowds,
    interleaved,
    max_at_once,
    over_limit,
    stale_accepted,
)
from etcdlock._chaos.worker import FenceClient

# ---- the sweep ----


def edges(*spans: tuple[float, float]) -> list[tuple[float, int]]:
    return [edge for begin, end in spans for edge in ((begin, 0), (end, 1))]


def test_max_at_once_counts_intervals_covering_one_moment() -> None:
    assert max_at_once([]) == 0
    assert max_at_once(edges((0, 1), (2, 3))) == 1
    assert max_at_once(edges((0, 5), (1, 2), (3, 4))) == 2
    assert max_at_once(edges((0, 5), (1, 4), (2, 3))) == 3


def test_intervals_that_only_touch_overlap() -> None:
    """Closed intervals: one that begins the moment another ends overlaps it (a holder whose entry is
    logged at the instant of another's last write acted with it)."""
    assert max_at_once(edges((0, 1), (1, 2))) == 2
    assert max_at_once(edges((0, 0), (0, 0))) == 2  # two entries at one instant, no writes yet


def test_crowds_lists_each_set_of_more_than_limit_once() -> None:
    spans = {1: [0.0, 10.0], 2: [1.0, 3.0], 3: [2.0, 4.0], 4: [5.0, 6.0], 5: [5.5, 7.0]}
    assert crowds(spans, 2) == [[1, 2, 3], [1, 4, 5]]
    assert crowds(spans, 3) == []
    assert crowds({1: [0.0, 1.0], 2: [1.0, 2.0]}, 1) == [[1, 2]]


# ---- the counting resource's bookkeeping, one name ----


def acting(*events: tuple[str, int, float]) -> Acting:
    a = Acting()
    for op, token, at in events:
        if op == "E":
            a.enter(token, at)
        elif op == "W":
            a.wrote(token, at)
        else:
            a.leave(token)
    return a


def test_a_holder_acts_from_its_entry_to_its_last_write() -> None:
    a = acting(("E", 5, 1.0), ("W", 5, 2.0), ("W", 5, 3.0))
    assert a.spans[5] == [1.0, 3.0]
    assert a.inside(5) and not a.inside(6)
    a.leave(5)
    assert not a.inside(5)
    assert a.spans[5] == [1.0, 3.0]  # leaving ends nothing that writes did not: it only closes the door


def test_holders_that_take_turns_never_crowd() -> None:
    """Limit 2: holders come and go, each entering after one of the two before it wrote its last."""
    a = acting(("E", 1, 0.0), ("E", 2, 0.1), ("W", 1, 1.0), ("W", 2, 1.1), ("X", 1, 1.2))
    a.enter(3, 1.3)
    assert a.at_once_with(3, 1.4) == 1  # 1 and 2 wrote last before 3 entered
    assert a.at_once_with(2, 1.4) == 2  # 2 from its entry on: 1 until 1.0, then 3
    a.wrote(3, 1.4)
    a.wrote(2, 1.5)
    assert a.at_once_with(3, 1.6) == 2


def test_a_paused_holder_writing_after_its_place_was_filled_is_counted_with_the_others() -> None:
    """Holder 1 stops after its write at 1.0 (paused); its lease runs out; 3 takes its place beside 2. If
    1 writes again, its time of acting runs from its entry to now and overlaps both: three at once."""
    a = acting(
        ("E", 1, 0.0), ("W", 1, 1.0),
        ("E", 2, 0.5), ("W", 2, 4.0),
        ("E", 3, 4.5), ("W", 3, 5.0), ("W", 2, 5.5),
    )  # fmt: skip
    assert a.at_once_with(1, 6.0) == 3
    # Had it not written again, nothing would have crowded: its acting ended at 1.0.
    assert a.at_once_with(3, 6.0) == 2


def test_a_killed_holder_stops_counting_at_its_last_write() -> None:
    """Never leaves, never writes again: the holders after it are not crowded by it."""
    a = acting(("E", 1, 0.0), ("W", 1, 1.0), ("E", 2, 0.5), ("W", 2, 4.0), ("E", 3, 4.5), ("W", 2, 4.8))
    assert a.at_once_with(2, 5.0) == 2
    assert a.at_once_with(3, 5.0) == 2  # 2 and 3; 1 acted last at 1.0


def test_others_acting_only_before_the_writers_entry_do_not_count() -> None:
    a = acting(("E", 1, 0.0), ("W", 1, 1.0), ("E", 2, 0.2), ("W", 2, 1.5), ("E", 3, 2.0))
    assert a.at_once_with(3, 3.0) == 1


# ---- over the TCP protocol, the way workers talk to it ----


async def test_the_counting_resource_refuses_a_write_that_would_crowd_it() -> None:
    with CountingResource(2) as resource:
        clients = [await FenceClient.connect(resource.address) for _ in range(3)]
        try:
            one, two, three = clients
            assert await one.enter("s", 10, "w1")
            assert await one.write("s", 10, "w1", 0)
            assert await two.enter("s", 11, "w2")
            assert await two.write("s", 11, "w2", 0)
            # 10 stops acting (paused: no more writes); 12 comes in beside 11.
            assert await three.enter("s", 12, "w3")
            assert await three.write("s", 12, "w3", 0)
            assert await two.write("s", 11, "w2", 1)
            assert not await one.write("s", 10, "w1", 1)  # three at once: refused
            assert await three.write("s", 12, "w3", 1)  # the refusal did not stretch 10's acting
            assert await one.leave("s", 10, "w1")
            assert not await one.write("s", 10, "w1", 2)  # left: NOTIN
            assert not await one.write("s", 99, "w1", 0)  # never entered: NOTIN
            assert await one.write("t", 10, "w1", 0) is False  # names are counted apart, and 10 is not in t
        finally:
            for c in clients:
                await c.close()
    log = resource.snapshot()
    refused = [(w.token, w.seq) for w in log if not w.accepted]
    assert refused == [(10, 1), (10, 2), (99, 0), (10, 0)]
    assert over_limit(log, 2) == []
    assert [w.op for w in log if w.token == 10 and w.name == "s"] == ["E", "W", "W", "X", "W"]


async def test_with_enforcement_off_the_log_still_shows_the_crowd() -> None:
    """The checker recomputes from the log: with the resource not refusing anything, the same requests
    leave three holders acting at once, and over_limit finds exactly them."""
    with CountingResource(2, enforce=False) as resource:
        client = await FenceClient.connect(resource.address)
        try:
            for op, token in (("E", 10), ("W", 10), ("E", 11), ("W", 11), ("E", 12), ("W", 12), ("W", 11)):
                if op == "E":
                    assert await client.enter("s", token, "w")
                else:
                    assert await client.write("s", token, "w", 0)
            assert await client.write("s", 10, "w", 1)  # accepted: nothing is enforced
        finally:
            await client.close()
    assert over_limit(resource.snapshot(), 2) == [("s", [10, 11, 12])]


def writes(*entries: tuple[str, int, str] | tuple[str, int, str, bool]) -> list[Write]:
    """Writes at increasing moments: (name, token, op[, accepted])."""
    out = []
    for i, entry in enumerate(entries):
        name, token, op = entry[:3]
        accepted = entry[3] if len(entry) == 4 else True
        out.append(Write(float(i), name, token, "w", i, accepted, op))
    return out


def test_over_limit_from_a_log() -> None:
    log = writes(
        ("s", 1, "E"), ("s", 1, "W"), ("s", 2, "E"), ("s", 2, "W"),
        ("s", 3, "E"), ("s", 3, "W", False),  # refused: does not count
        ("s", 2, "W"), ("s", 1, "X"), ("s", 3, "W"),  # 3 writes only after 1's last write: fine
        ("t", 7, "W"), ("t", 8, "W"), ("t", 9, "W"), ("t", 8, "W"), ("t", 7, "W"),  # first writes begin
    )  # fmt: skip
    assert over_limit(log, 2) == [("t", [7, 8, 9])]
    assert over_limit(log, 3) == []


# ---- one holder at a time: the fence and the election's interleaving rule ----


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([1, 1, 2, 2, 3], []),
        ([1, 2, 1], [("e", 1, 2)]),
        ([1, 2, 2, 3, 2, 2], [("e", 2, 3)]),  # once, where 2 came back
    ],
)
def test_interleaved_leaders(tokens: Iterable[int], expected: list[tuple[str, int, int]]) -> None:
    log = writes(*[("e", t, "W") for t in tokens])
    assert interleaved(log) == expected


def test_interleaving_ignores_refused_writes_and_other_names() -> None:
    log = writes(("e", 1, "W"), ("e", 2, "W"), ("e", 1, "W", False), ("f", 1, "W"), ("e", 2, "W"))
    assert interleaved(log) == []


async def test_the_fence_refuses_a_lower_token_and_the_counting_ops() -> None:
    with FencedResource() as resource:
        client = await FenceClient.connect(resource.address)
        try:
            assert await client.write("e", 5, "w1", 0)
            assert await client.write("e", 7, "w2", 0)
            assert not await client.write("e", 5, "w1", 1)
            assert not await client.enter("e", 8, "w3")  # not a counting resource: ERR
        finally:
            await client.close()
    log = resource.snapshot()
    assert [(w.token, w.accepted) for w in log] == [(5, True), (7, True), (5, False)]
    assert stale_accepted(log) == [] and interleaved(log) == []
