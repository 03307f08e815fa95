"""`SyncElection` and `SyncTerm`: leader election for threads.

    election = client.election("svc/leader")
    with election.campaign("node-1", timeout=30) as term:   # returns once we lead
        term.proclaim("node-1 at revision 7")
    with election.observe() as leaders:
        for leader in leaders:
            ...

A SyncTerm is a SyncLock whose acquisitions are async Terms (one per campaign, made on the loop): campaign,
loss, resign and the fencing token are the async recipe's. It carries the value last proclaimed from one
campaign to the next, as the async Term does.
"""

from __future__ import annotations

from collections.abc import Callable

from etcdlock._recipes.election import Election, Leader, Term
from etcdlock._recipes.session import DEFAULT_TTL
from etcdlock._recipes.state import RecipeClient
from etcdlock._sync.lock import SyncLock
from etcdlock._sync.observe import SyncObservation, observation
from etcdlock._sync.portal import Portal
from etcdlock._sync.session import SyncSession


class SyncTerm(SyncLock):
    """A candidacy in an election, for threads: ``with election.campaign("node-1") as term:`` runs the body
    while we lead; leaving the block resigns. Reusable like a SyncLock: acquiring it again campaigns again
    (with the value last proclaimed). See `etcdlock.Term` for the meaning of each member."""

    def __init__(
        self,
        portal: Portal,
        name: str,
        campaign: Callable[[bytes], Term],
        proposal: bytes,
        *,
        timeout: float | None,
    ) -> None:
        self._value = proposal
        # Each campaign is a fresh async Term with the value proclaimed last (read when it is made).
        super().__init__(portal, name, lambda: campaign(self._value), timeout=timeout, kind="election")

    def _term(self) -> Term:
        term = self._held_lock().handle
        assert isinstance(term, Term)
        return term

    @property
    def value(self) -> bytes:
        return self._value

    def proclaim(self, value: str | bytes, *, timeout: float | None = None) -> None:
        """Announce a new value as leader (observers see it), only while we still lead.

        Raises LockLost if we no longer lead or hold no term (nothing was written), ConfigError for a
        value that is not str or bytes, EtcdError if etcd fails."""
        term = self._term()
        self._portal.call(term.proclaim(value, timeout=timeout))
        self._value = term.value

    def resign(self) -> None:
        self.release()


class SyncElection:
    """An election on NAME, for threads: campaign for it, read its leader, observe its leaders. See
    `etcdlock.Election` for the meaning of each member."""

    def __init__(self, portal: Portal, client: RecipeClient, election: Election) -> None:
        self._portal = portal
        self._client = client
        self._election = election

    @property
    def name(self) -> str:
        """The election's name: its candidates' keys are NAME/<lease hex>."""
        return self._election.name

    def campaign(
        self,
        proposal: str | bytes,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: SyncSession | None = None,
    ) -> SyncTerm:
        """A candidacy with `proposal` (nothing is sent yet): ``with election.campaign("node-1",
        timeout=30) as term:`` returns once we lead, or raises LockTimeout after `timeout` seconds (None:
        wait as long as it takes) with our candidacy withdrawn; ``term.acquire()`` returns False instead.
        Leaving the block resigns. Without `session=` the key goes on the client's default session for
        `ttl`. Raises ConfigError for a bad proposal, ttl or timeout."""
        on_session = session.async_session if session is not None else None

        def campaign(value: bytes) -> Term:  # one async Term per campaign, made on the loop
            return self._election.campaign(value, ttl=ttl, timeout=timeout, session=on_session)

        # The first Term checks the arguments (bad input fails here, at once) and has the proposal as bytes.
        first = self._portal.run(
            lambda: self._election.campaign(proposal, ttl=ttl, timeout=timeout, session=on_session)
        )
        return SyncTerm(self._portal, self.name, campaign, first.value, timeout=timeout)

    def leader(self, *, timeout: float | None = None) -> Leader | None:
        return self._portal.call(self._election.leader(timeout=timeout))

    def observe(self) -> SyncObservation:
        """Each new leader, and each value a leader proclaims, from the current one on: ``with
        election.observe() as leaders: for leader in leaders: ...``. Blocks while there is no leader.
        Closing it (the `with`'s end, close() from any thread) ends the watch; see SyncObservation."""
        return self._portal.run(
            lambda: observation(self._portal, self._client, self.name, self._election.observe())
        )

    def __repr__(self) -> str:
        return f"<SyncElection {self.name!r}>"


__all__ = ["SyncElection", "SyncTerm"]
