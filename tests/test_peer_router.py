"""PeerRouter: partitions between real etcd members (3 on loopback, peer traffic through the router)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etcdlock._sync import SyncClient
from etcdlock.testing import EtcdCluster, EtcdMember, PeerRouter
from tests.waiting import wait_until_sync


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3, route_peers=True) as c:
        yield c


def leaders_among(members: list[EtcdMember]) -> list[EtcdMember]:
    return [m for m in members if m.is_leader(timeout=1.0)]


def test_every_peer_connection_is_known_by_its_sender(cluster: EtcdCluster) -> None:
    router = cluster.peer_router
    names = [m.name for m in cluster.members]
    assert router.members == names
    for m in cluster.members:
        assert m.advertised_peer_url == f"http://{router.front(m.name).endpoint}" != m.peer_url
    wait_until_sync(
        lambda: {(a, b) for a in names for b in names if a != b} <= set(router.connections_seen),
        timeout=10,
        what="connections between every ordered pair of members",
    )
    # Every connection came from a member process and was named after it (none from "unknown").
    assert all(sender in names for sender, _ in router.connections_seen), router.connections_seen


def test_an_isolated_leader_is_replaced_and_rejoins_after_the_heal(cluster: EtcdCluster) -> None:
    router = cluster.peer_router
    old = cluster.leader()
    others = [m for m in cluster.members if m is not old]
    router.isolate(old.name)
    assert all(router.is_cut(old.name, m.name) for m in others)
    assert not router.is_cut(others[0].name, others[1].name)
    wait_until_sync(lambda: len(leaders_among(others)) == 1, timeout=15, what="a leader among the others")
    # Cut off from a quorum, the old leader steps down (etcd's check-quorum) and stays without a say.
    wait_until_sync(lambda: not old.is_leader(timeout=1.0), timeout=15, what="the old leader to step down")
    with SyncClient([m.endpoint for m in others]) as majority:
        majority.put("/router/written-during-the-partition", "yes")
    with SyncClient([old.endpoint]) as isolated:  # clients still reach it; it just knows nothing new
        got = isolated.get("/router/written-during-the-partition", serializable=True)
        assert not got.kvs

        router.heal()
        cluster.wait_healthy(timeout=30)

        def caught_up() -> bool:
            return bool(isolated.get("/router/written-during-the-partition", serializable=True).kvs)

        wait_until_sync(caught_up, timeout=15, what="the old leader to catch up with the write it missed")
    assert len(leaders_among(cluster.members)) == 1


def test_links_are_cut_and_mended_one_by_one(cluster: EtcdCluster) -> None:
    router: PeerRouter = cluster.peer_router
    leader = cluster.leader()
    a, b = (m for m in cluster.members if m is not leader)
    # Two followers that cannot talk to each other still hear the leader: nothing changes.
    router.cut(a.name, b.name)
    assert router.front(a.name).cut_sources == {b.name} and router.front(b.name).cut_sources == {a.name}
    assert router.front(leader.name).cut_sources == frozenset()
    cluster.wait_healthy(timeout=15)
    assert cluster.leader() is leader
    router.mend(b.name, a.name)
    assert all(router.front(m.name).cut_sources == frozenset() for m in cluster.members)
    with pytest.raises(ValueError):
        router.cut(a.name, a.name)
    with pytest.raises(ValueError):
        router.isolate("nobody")


def test_per_member_flags_and_leadership_transfer() -> None:
    with EtcdCluster(3, member_args={0: ["--election-timeout=3000"]}) as c:
        slow = c.members[0]
        assert slow.command()[-1] == "--election-timeout=3000"
        assert all("--election-timeout=3000" not in m.command() for m in c.members[1:])
        c.transfer_leadership(slow)
        assert c.leader() is slow
        assert len({m.member_id() for m in c.members}) == 3
    with pytest.raises(ValueError, match="member_args"):
        EtcdCluster(3, member_args={3: ["--x"]})
