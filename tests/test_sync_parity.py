"""One API, two flavours: every public member of the asyncio classes has a sync twin of the same shape.

For each pair (Client/SyncClient, and the objects they hand out) the sync class must have every public
method and property of the async one, with the same parameter names, kinds, defaults and annotations once
async types are mapped to their sync counterparts (Lock -> SyncLock, Term -> SyncTerm, ReadLock -> SyncLock,
asyncio.Event -> threading.Event, AsyncIterator -> Iterator, ...; `async def` -> `def`; __aenter__ ->
__enter__). What cannot have a twin, or
differs on purpose, is in the tables below, each entry with its reason; an entry that is no longer needed
fails the test too, so the tables stay true. No etcd needed.
"""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import inspect
import operator
import re
import threading
import types
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

from etcdlock import (
    Client,
    Election,
    KeepAlive,
    Leader,
    Lock,
    ReadLock,
    RWLock,
    Semaphore,
    Session,
    Slot,
    SyncClient,
    SyncElection,
    SyncKeepAlive,
    SyncLock,
    SyncObservation,
    SyncRWLock,
    SyncSemaphore,
    SyncSession,
    SyncSlot,
    SyncTerm,
    SyncWatch,
    Term,
    Watcher,
    WriteLock,
)
from etcdlock._core.client import CoreClient
from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._recipes.state import RecipeClient
from etcdlock._sync import SyncDebugServer

# The sync type each async type becomes in a sync signature.
SYNC_TYPE: dict[object, object] = {
    Client: SyncClient,
    CoreClient: SyncClient,
    RecipeClient: SyncClient,
    Lock: SyncLock,
    Election: SyncElection,
    Term: SyncTerm,
    Semaphore: SyncSemaphore,
    Slot: SyncSlot,
    RWLock: SyncRWLock,
    ReadLock: SyncLock,  # the read and write locks of a SyncRWLock are plain SyncLocks
    WriteLock: SyncLock,
    Session: SyncSession,
    KeepAlive: SyncKeepAlive,
    Watcher: SyncWatch,
    DebugServer: SyncDebugServer,
    asyncio.Event: threading.Event,  # the events users wait on (lost)
    AsyncGenerator[Leader, None]: SyncObservation,  # observe(): an iterator closeable from any thread
    AsyncIterator: Iterator,
}

# The sync name of each async protocol method.
SYNC_NAME = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}


@dataclass(frozen=True)
class Pair:
    async_cls: type
    sync_cls: type
    init: bool = False  # compare the constructors too (only where users call them)


PAIRS = [
    Pair(Client, SyncClient, init=True),
    Pair(Lock, SyncLock),
    Pair(Election, SyncElection),
    Pair(Term, SyncTerm),
    Pair(Semaphore, SyncSemaphore),
    Pair(Slot, SyncSlot),
    Pair(RWLock, SyncRWLock),
    Pair(ReadLock, SyncLock),
    Pair(WriteLock, SyncLock),
    Pair(Session, SyncSession),
    Pair(KeepAlive, SyncKeepAlive),
    Pair(Watcher, SyncWatch),
    Pair(DebugServer, SyncDebugServer),
]

# ---- the exemption tables: keys are class names as written in the code ----

_NAME_BOOKKEEPING = "the lock recipe's bookkeeping of the names on the lease, done on the loop by the lock"
_CONTENDER = (
    "the recipe's loop-bound queue entry of the current acquisition, for the recipes and their tests; the "
    "held handle's members are mirrored one by one"
)
_HOLDABLES = ("Lock", "Term", "Slot", "ReadLock", "WriteLock")
_CANCEL_ON_LOSS = (
    "cancelling the body needs a task to cancel; a thread cannot be stopped safely from outside, so "
    "sync code watches held.lost (or passes on_lost= to client.lock)"
)
_SCHEDULER_TIMING = "the keepalive scheduler's timing, read on the loop by the keepalive manager"

# Public members of an async class that have no sync twin: (async class, member) -> why.
NO_TWIN: dict[tuple[str, str], str] = {
    **{(holdable, "contender"): _CONTENDER for holdable in _HOLDABLES},
    ("Session", "claim"): _NAME_BOOKKEEPING,
    ("Session", "unclaim"): _NAME_BOOKKEEPING,
    ("Session", "acquire_request"): "the lock recipe's prebuilt protobuf request, cached on the loop",
    ("KeepAlive", "interval"): _SCHEDULER_TIMING,
    ("KeepAlive", "stall_after"): _SCHEDULER_TIMING,
    ("Watcher", "create_request"): "the watch stream's protobuf request for this watch, built on the loop",
    ("DebugServer", "start"): "serve_debug() hands the server out started",
}

# Public members of a sync class that have no async twin: (sync class, member) -> why.
SYNC_ONLY: dict[tuple[str, str], str] = {
    ("SyncClient", "async_client"): "the asyncio client underneath, for code running on its loop thread",
    ("SyncClient", "loop_thread"): "the thread the async core and every callback run on",
    ("SyncSession", "async_session"): "the asyncio session underneath, for code running on the loop thread",
    ("SyncWatch", "__next__"): "an iterator's own step (Watcher is async-iterable: __aiter__ is a generator)",
    ("SyncWatch", "next"): (
        "next(timeout): async code bounds next_event() with asyncio.timeout(); a thread has no such scope"
    ),
    ("SyncWatch", "close"): "cancel() under the name iterators are closed by (the chaos checker uses it)",
}

# Parameters only the async method has: (async class, method, parameter) -> why.
ASYNC_ONLY_PARAMS: dict[tuple[str, str, str], str] = {
    ("Client", "lock", "cancel_on_loss"): _CANCEL_ON_LOSS,
    ("Client", "semaphore", "cancel_on_loss"): _CANCEL_ON_LOSS,
    ("Election", "campaign", "cancel_on_loss"): _CANCEL_ON_LOSS,
    ("RWLock", "read", "cancel_on_loss"): _CANCEL_ON_LOSS,
    ("RWLock", "write", "cancel_on_loss"): _CANCEL_ON_LOSS,
}

# Parameters only the sync method has: (async class, method, parameter) -> why.
SYNC_ONLY_PARAMS: dict[tuple[str, str, str], str] = {
    ("Client", "lock", "on_lost"): (
        "a SyncLock is held again and again: on_lost(reason) is told of every hold's loss (async code calls "
        "held.add_lost_callback once per hold)"
    ),
    ("Client", "try_lock", "on_lost"): "as for lock(): the SyncLock returned can be held again and again",
}

# Members whose signatures differ on purpose, for now: (async class, member) -> why.
DIFFERENT: dict[tuple[str, str], str] = {}

# Names the modules import only for type checking, for evaluating their annotations here.
_NAMESPACE = {
    cls.__name__: cls
    for cls in [
        *(c for pair in PAIRS for c in (pair.async_cls, pair.sync_cls)),
        *SYNC_TYPE,
        *SYNC_TYPE.values(),
    ]
    if isinstance(cls, type)
}


# ---- the comparison ----


def to_sync(t: object) -> object:
    """The sync form of annotation `t`: async types replaced, inside unions and generics too."""
    if isinstance(t, list):  # a Callable's parameter list
        return [to_sync(x) for x in t]
    if isinstance(t, typing.Hashable) and t in SYNC_TYPE:
        return SYNC_TYPE[t]
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is None or not args:
        return t
    sync_origin = SYNC_TYPE.get(origin, origin)
    sync_args = tuple(to_sync(a) for a in args)
    if sync_origin is origin and sync_args == args:
        return t
    if origin in (types.UnionType, typing.Union):
        return functools.reduce(operator.or_, sync_args)
    if origin is collections.abc.Callable:
        return Callable[sync_args[0], sync_args[1]]
    return sync_origin[sync_args]  # type: ignore[index]


def _signature(fn: Callable[..., object]) -> inspect.Signature:
    return inspect.signature(fn, eval_str=True, locals=_NAMESPACE)


def _async_name(sync_name: str) -> str:
    return {v: k for k, v in SYNC_NAME.items()}.get(sync_name, sync_name)


def public_members(cls: type, *, init: bool) -> dict[str, object]:
    """Public methods and properties defined on `cls` or its bases (not `object`), by name."""
    dunders = {*SYNC_NAME, *SYNC_NAME.values(), *(["__init__"] if init else [])}
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= {n for n in dunders if getattr(cls, n, None) not in (None, getattr(object, n, None))}
    return {n: inspect.getattr_static(cls, n) for n in sorted(names)}


def instance_attributes(cls: type) -> set[str]:
    """Public attributes the constructors of the class and its bases set on `self` (the sync side may
    mirror them as read-only properties; not required, as these are mostly internal state)."""
    found: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if not inspect.isfunction(init):
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        found |= set(re.findall(r"\bself\.([a-z]\w*)\s*(?::[^=\n]+)?=(?!=)", source))
    return found


def _function(member: object) -> Callable[..., object] | None:
    if isinstance(member, staticmethod | classmethod):
        member = member.__func__
    return member if inspect.isfunction(member) else None


def _compare_signatures(
    where: str, owner: str, name: str, a: Callable[..., object], s: Callable[..., object]
) -> list[str]:
    problems: list[str] = []
    sig_a, sig_s = _signature(a), _signature(s)
    only_async = {p for (c, m, p) in ASYNC_ONLY_PARAMS if (c, m) == (owner, name)}
    only_sync = {p for (c, m, p) in SYNC_ONLY_PARAMS if (c, m) == (owner, name)}
    for p in sorted((only_async | only_sync) & set(sig_a.parameters) & set(sig_s.parameters)):
        problems.append(f"{where}: parameter {p!r} is on both sides now: drop its exemption")
    params_a = [p for p in sig_a.parameters.values() if p.name not in only_async]
    params_s = [p for p in sig_s.parameters.values() if p.name not in only_sync]
    if [p.name for p in params_a] != [p.name for p in params_s]:
        problems.append(
            f"{where}: parameters {[p.name for p in params_s]}, "
            f"the async twin has {[p.name for p in params_a]}"
        )
        return problems
    for pa, ps in zip(params_a, params_s, strict=True):
        if pa.kind != ps.kind:
            problems.append(
                f"{where}: parameter {ps.name!r} is {ps.kind.description}, not {pa.kind.description}"
            )
        if pa.default != ps.default:
            problems.append(f"{where}: parameter {ps.name!r} defaults to {ps.default!r}, not {pa.default!r}")
        if to_sync(pa.annotation) != ps.annotation:
            problems.append(
                f"{where}: parameter {ps.name!r} is annotated {ps.annotation!r}, "
                f"expected {to_sync(pa.annotation)!r}"
            )
    if to_sync(sig_a.return_annotation) != sig_s.return_annotation:
        problems.append(
            f"{where}: returns {sig_s.return_annotation!r}, expected {to_sync(sig_a.return_annotation)!r}"
        )
    return problems


def _compare_member(owner: str, where: str, name: str, a: object, s: object) -> list[str]:
    if isinstance(a, property):
        if not isinstance(s, property):
            return [f"{where}: must be a property, as its async twin is"]
        assert a.fget is not None and s.fget is not None
        expected, got = to_sync(_signature(a.fget).return_annotation), _signature(s.fget).return_annotation
        return [] if expected == got else [f"{where}: property is {got!r}, expected {expected!r}"]
    fa, fs = _function(a), _function(s)
    if fa is None:
        return []  # a plain class attribute (a constant): nothing to mirror in a signature
    if fs is None:
        return [f"{where}: must be a method, as its async twin is"]
    if inspect.iscoroutinefunction(fs) or inspect.isasyncgenfunction(fs):
        return [f"{where}: is async; a sync twin must block instead"]
    return _compare_signatures(where, owner, name, fa, fs)


def mismatches(pair: Pair) -> list[str]:
    """Everything about `pair` that is not a twin and not exempted, and every stale exemption."""
    owner, sync_owner = pair.async_cls.__name__, pair.sync_cls.__name__
    async_members = public_members(pair.async_cls, init=pair.init)
    sync_members = public_members(pair.sync_cls, init=pair.init)
    problems: list[str] = []
    for name, a in async_members.items():
        sync_name = SYNC_NAME.get(name, name)
        where = f"{sync_owner}.{sync_name}"
        if (owner, name) in NO_TWIN:
            if sync_name in sync_members:
                problems.append(f"{where} exists now: drop its NO_TWIN exemption")
            continue
        if sync_name not in sync_members:
            problems.append(f"{where} is missing: the twin of {owner}.{name}")
            continue
        found = _compare_member(owner, where, name, a, sync_members[sync_name])
        if (owner, name) in DIFFERENT:
            if not found:
                problems.append(f"{where} matches {owner}.{name} now: drop its DIFFERENT exemption")
            continue
        problems += found
    attributes = instance_attributes(pair.async_cls)
    for sync_name in sync_members:
        name = _async_name(sync_name)
        if name in async_members or name in attributes:
            if (sync_owner, sync_name) in SYNC_ONLY:
                problems.append(
                    f"{sync_owner}.{sync_name} has an async twin now: drop its SYNC_ONLY exemption"
                )
        elif (sync_owner, sync_name) not in SYNC_ONLY:
            problems.append(f"{sync_owner}.{sync_name} has no async twin in {owner}: add one, or exempt it")
    return problems


# ---- the tests ----


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.async_cls.__name__}-{p.sync_cls.__name__}")
def test_sync_twins_match_their_async_originals(pair: Pair) -> None:
    problems = mismatches(pair)
    assert not problems, "\n".join(problems)


def test_every_exemption_names_a_compared_class_and_gives_a_reason() -> None:
    async_names = {p.async_cls.__name__ for p in PAIRS}
    sync_names = {p.sync_cls.__name__ for p in PAIRS}
    for table, names in [
        (NO_TWIN, async_names),
        (DIFFERENT, async_names),
        (ASYNC_ONLY_PARAMS, async_names),
        (SYNC_ONLY_PARAMS, async_names),
        (SYNC_ONLY, sync_names),
    ]:
        for key, reason in table.items():  # type: ignore[attr-defined]
            assert key[0] in names, f"exemption {key} names no compared class"
            assert len(reason) > 20, f"exemption {key} needs a real reason"


def test_async_types_map_to_sync_ones_inside_annotations() -> None:
    assert to_sync(Lock | None) == (SyncLock | None)
    assert to_sync(list[Session]) == list[SyncSession]
    assert to_sync(AsyncIterator[int]) == Iterator[int]
    assert to_sync(AsyncGenerator[Leader, None]) == SyncObservation
    assert to_sync(ReadLock | None) == (SyncLock | None)
    assert to_sync(Callable[[Lock], asyncio.Event]) == Callable[[SyncLock], threading.Event]
    assert to_sync(dict[str, int]) == dict[str, int]


# A small async class and sync classes that do or do not mirror it: the comparison must tell them apart.


class _Async:
    def __init__(self) -> None:
        self.ttl = 1

    async def take(self, name: str, *, timeout: float | None = None) -> Lock:
        raise NotImplementedError

    async def drop(self) -> None:
        raise NotImplementedError

    @property
    def lost(self) -> asyncio.Event:
        raise NotImplementedError

    async def __aenter__(self) -> Session:
        raise NotImplementedError


class _Twin:
    def take(self, name: str, *, timeout: float | None = None) -> SyncLock:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    @property
    def lost(self) -> threading.Event:
        raise NotImplementedError

    @property
    def ttl(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> SyncSession:
        raise NotImplementedError


class _Drifted:
    def take(self, name: str, timeout: float | None = 1.0) -> Lock:
        raise NotImplementedError

    async def drop(self) -> None:
        raise NotImplementedError

    def extra(self) -> None:
        raise NotImplementedError


def test_the_comparison_accepts_a_twin_and_names_every_drift() -> None:
    assert mismatches(Pair(_Async, _Twin)) == []
    problems = mismatches(Pair(_Async, _Drifted))
    expected = [
        "_Drifted.__enter__ is missing",
        "_Drifted.drop: is async",
        "_Drifted.lost is missing",
        "_Drifted.take: parameter 'timeout' is positional or keyword, not keyword-only",
        "_Drifted.take: parameter 'timeout' defaults to 1.0, not None",
        "_Drifted.take: returns",
        "_Drifted.extra has no async twin",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), f"not reported: {start!r} in {problems}"
    assert len(problems) == len(expected), problems


def test_a_method_added_to_client_without_a_twin_fails() -> None:
    async def defragment(self: Client, *, timeout: float | None = None) -> None:
        raise NotImplementedError

    grown = type("Client", (Client,), {"defragment": defragment})
    assert mismatches(Pair(grown, SyncClient, init=True)) == [
        "SyncClient.defragment is missing: the twin of Client.defragment"
    ]


def test_a_stale_exemption_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # An exemption for a member that has its twin after all must go.
    monkeypatch.setitem(NO_TWIN, ("Client", "status"), "pretend it had no twin")
    assert mismatches(Pair(Client, SyncClient, init=True)) == [
        "SyncClient.status exists now: drop its NO_TWIN exemption"
    ]
