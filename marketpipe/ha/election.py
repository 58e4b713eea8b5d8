"""Leader election per shard, and the instance's registration (DESIGN §6, §9).

Usage::

    election = make_election(settings, "orderbook", on_change, on_ingest=..., hot=..., ...)
    await election.start(tasks)   # returns at once; campaigning runs under the supervisor
    election.terms                # shard -> its current Term (marketpipe.ha.term); none: follower
    await election.resign()       # on shutdown: the standbys take over at once

``on_change(term)`` runs when this instance starts leading a shard, and again with the same term,
ended (``term.ended``, ``term.reason``), when it stops. ``on_ingest(shards)`` says which shards
the instance must keep in sync (it leads them, stands by for them, or covers a hand-over);
``hot(shard)`` answers whether one is in sync. Pairs map to shards by
:func:`~marketpipe.ha.assignment.shard_of`.

With ``ETCD_ENDPOINTS`` empty, :class:`StaticLeader` leads every shard; its epoch is the start time
in milliseconds (it still grows across restarts).

:class:`EtcdElection` is a small recipe on etcd's primitives (etcd3aio's own ``Election`` does not
keep its lease alive). One lease of ``LEADER_TTL_SECONDS`` per instance, kept alive, carries
everything the instance owns: its registration ``/marketpipe/<service>/instances/<id>`` (JSON:
id, host, port, version, started, leading, standby, and extensions: epochs of the shards it
leads, hot shards, pairs per ingested shard) and the leader
key of each shard it leads, ``/marketpipe/<service>/shards/<k>/leader`` (with ``SHARDS=1``, the
key ``/marketpipe/<service>/leader``), taken by a transaction "create if its create_revision is
0"; a shard's ``epoch`` is its key's create revision. One watch on ``/marketpipe/<service>/``
keeps every instance's view of the registrations and key holders current, and the pure
:mod:`~marketpipe.ha.assignment` decides, on each change, which shards to campaign for, which to
hand over (only once their wanted leader reports them hot: make-before-break; the hand-over
flushes what the term sent, then deletes the key) and which to ingest. When an instance dies,
its lease expires, its keys vanish with it, and each of its shards is taken by a hot standby.

Safety: the instance keeps a local lease deadline (send time of the last successful keep-alive +
the TTL etcd granted) in a :class:`~marketpipe.ha.term.LeaseClock` every term shares. The server's
own expiry is later than that, so an instance whose keep-alives fail (etcd paused, partitioned,
dead) ends all its terms by a timer at its deadline, before any other instance can win one; and
``term.valid()`` reads the deadline itself, so a write checked against a term is refused past it
even before the timer has run. Ending a term is synchronous: ``on_change`` runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc.aio
import orjson
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio.kv import prefix_range_end

from marketpipe import __version__
from marketpipe.config import Settings
from marketpipe.exchange.backoff import Backoff
from marketpipe.ha.assignment import ClusterView, assign, plan
from marketpipe.ha.term import LeaseClock, Term
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    IS_LEADER,
    LEADER_EPOCH,
    LEADER_TRANSITIONS,
    SHARDS_LEADING,
    SHARDS_STANDBY,
)
from marketpipe.supervision import Supervised, Supervisor

log = get_logger("marketpipe.ha.election")

LeadershipCallback = Callable[[Term], None]
IngestCallback = Callable[[frozenset[int]], None]
HotCheck = Callable[[int], bool]
ReleaseHook = Callable[[Term], Awaitable[None]]
# Terms that end for these reasons end by choice, with what they sent flushed: the others may
# leave bytes of the old term in flight (see ServiceContext).
VOLUNTARY_REASONS = frozenset({"resign", "handover"})

PUT_EVENT, DELETE_EVENT = 0, 1  # mvccpb.Event.EventType
ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
# How often an instance re-reads its own hotness into its registration (and replans).
REFRESH_SECONDS = 0.5
RELEASE_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class InstanceInfo:
    """The static part of an instance's registration."""

    id: str
    host: str = field(default_factory=socket.gethostname)
    port: int = 0
    version: str = __version__
    started: int = field(default_factory=lambda: int(time.time() * 1000))


class Leadership(Protocol):
    terms: dict[int, Term]

    @property
    def is_leader(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    async def start(self, tasks: Supervisor) -> None: ...

    def step_down(self, reason: str) -> None: ...

    async def resign(self) -> None: ...


class LeaseLostError(Exception):
    """The lease could not be kept alive until its deadline (or etcd says it expired)."""


class _Roles:
    """What every implementation shares: the terms by shard, their lease clock, metrics and
    the callbacks."""

    def __init__(
        self,
        service: str,
        on_change: LeadershipCallback | None,
        shards: int,
        on_ingest: IngestCallback | None,
    ) -> None:
        self.service = service
        self.shards = shards
        self.terms: dict[int, Term] = {}
        self.lease = LeaseClock()
        self.ingesting: frozenset[int] = frozenset()
        self._last_epoch = 0
        self._on_change = on_change
        self._on_ingest = on_ingest

    @property
    def is_leader(self) -> bool:
        return any(term.valid() for term in self.terms.values())

    @property
    def term(self) -> Term | None:
        """Shard 0's term (the only one with ``SHARDS=1``)."""
        return self.terms.get(0)

    @property
    def epoch(self) -> int:
        """The newest epoch this instance led under."""
        return self._last_epoch

    def _ingest(self, shards: frozenset[int]) -> None:
        if shards != self.ingesting:
            self.ingesting = shards
            SHARDS_STANDBY.set(len(shards - self.terms.keys()))
            if self._on_ingest is not None:
                self._on_ingest(shards)

    def _lead(self, shard: int, epoch: int) -> None:
        term = self.terms[shard] = Term(epoch, self.lease, shard)
        self._last_epoch = max(self._last_epoch, epoch)
        self._leading_changed()
        LEADER_TRANSITIONS.labels("leader", "elected").inc()
        log.info("leading", service=self.service, shard=shard, epoch=epoch)
        if self._on_change is not None:
            self._on_change(term)

    def _end(self, shard: int, reason: str) -> None:
        term = self.terms.pop(shard, None)
        if term is None:
            return
        term.end(reason)
        self._leading_changed()
        LEADER_TRANSITIONS.labels("follower", reason).inc()
        log.warning(
            "stepped down", service=self.service, shard=shard, epoch=term.epoch, reason=reason
        )
        if self._on_change is not None:
            self._on_change(term)

    def step_down(self, reason: str) -> None:
        """End every term now; ``reason`` says why (see VOLUNTARY_REASONS)."""
        for shard in sorted(self.terms):
            self._end(shard, reason)

    def _leading_changed(self) -> None:
        IS_LEADER.set(1 if self.terms else 0)
        LEADER_EPOCH.set(max((t.epoch for t in self.terms.values()), default=self._last_epoch))
        SHARDS_LEADING.set(len(self.terms))
        SHARDS_STANDBY.set(len(self.ingesting - self.terms.keys()))


class StaticLeader(_Roles):
    """No etcd configured: this instance is the only one and leads every shard."""

    def __init__(
        self,
        service: str,
        on_change: LeadershipCallback | None = None,
        shards: int = 1,
        on_ingest: IngestCallback | None = None,
    ) -> None:
        super().__init__(service, on_change, shards, on_ingest)

    async def start(self, tasks: Supervisor) -> None:
        self._ingest(frozenset(range(self.shards)))
        epoch = int(time.time() * 1000)
        for shard in range(self.shards):
            self._lead(shard, epoch)

    async def resign(self) -> None:
        self.step_down("resign")


class EtcdElection(_Roles):
    def __init__(
        self,
        endpoints: Sequence[str],
        service: str,
        ttl: int = 5,
        on_change: LeadershipCallback | None = None,
        identity: str | None = None,
        *,
        shards: int = 1,
        standbys: int = 1,
        info: InstanceInfo | None = None,
        on_ingest: IngestCallback | None = None,
        hot: HotCheck | None = None,
        pairs: Callable[[], Mapping[int, int]] | None = None,
        before_release: ReleaseHook | None = None,
    ) -> None:
        super().__init__(service, on_change, shards, on_ingest)
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.info = info or InstanceInfo(self.identity)
        self.ttl = ttl
        self.standbys = standbys
        self.base = f"/marketpipe/{service}/"
        self._hot = hot or (lambda _shard: True)
        self._pairs = pairs or dict
        self._before_release = before_release
        self._client = Etcd3Client(
            [host_port(e) for e in endpoints],
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
        )
        self._lease_id = 0
        self.lease.deadline = 0.0  # monotonic time our lease surely still lives until
        self._watchdog: asyncio.TimerHandle | None = None
        self._task: Supervised | None = None
        # the view every instance shares, from the watch
        self._registrations: dict[str, dict[str, Any]] = {}
        self._holders: dict[int, str] = {}
        self._changed = asyncio.Event()
        self._registered: bytes | None = None

    def leader_key(self, shard: int) -> str:
        return f"{self.base}leader" if self.shards == 1 else f"{self.base}shards/{shard}/leader"

    @property
    def registration_key(self) -> str:
        return f"{self.base}instances/{self.identity}"

    async def start(self, tasks: Supervisor) -> None:
        await self._client.connect()
        # It catches every error itself: if it still ends, no term may outlive it.
        self._task = tasks.spawn(f"election-{self.service}", self._campaign_forever, restart=False)

    async def resign(self) -> None:
        """Stop campaigning, end every term now, and revoke the lease (the registration and
        every leader key go with it) so that the standbys take over at once."""
        if self._task is not None:
            await self._task.stop()
            self._task = None
        self.step_down("resign")
        await self._release_lease()
        await self._client.close()

    # --- the campaign ---

    async def _campaign_forever(self) -> None:
        backoff = Backoff(base=0.1, cap=self.ttl / 2)
        while True:
            try:
                await self._lease_life()
                backoff.reset()
            except Exception as exc:  # even a surprise from the client must not end campaigning
                reason = _reason(exc)
                log.warning(
                    "election term ended",
                    service=self.service,
                    reason=reason,
                    error=repr(exc),
                    exc_info=reason == "error",
                )
                self.step_down(reason)
            await self._release_lease()
            await asyncio.sleep(backoff.next_delay())

    async def _lease_life(self) -> None:
        """One lease's life: register, follow the view, act on each change, until the lease is
        lost."""
        rpc_timeout = max(1.0, self.ttl / 2)
        sent = time.monotonic()
        lease = await self._client.lease.grant(self.ttl, timeout=rpc_timeout)  # type: ignore[union-attr]
        self._lease_id = lease.ID
        self._extend(sent + lease.TTL)
        keepalive = asyncio.create_task(self._keep_alive(lease.ID), name="election-keepalive")
        watch: asyncio.Task[None] | None = None
        try:
            self._registered = None
            await self._register(rpc_timeout)
            revision = await self._load(rpc_timeout)
            watch = asyncio.create_task(self._follow(revision + 1), name="election-watch")
            while True:
                await self._act(rpc_timeout)
                await self._register(rpc_timeout)
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait(
                        {keepalive, watch, changed},
                        timeout=REFRESH_SECONDS,
                        return_when="FIRST_COMPLETED",
                    )
                finally:
                    changed.cancel()
                for task in (keepalive, watch):
                    if task.done():
                        task.result()  # raises LeaseLostError or the etcd error
                        raise LeaseLostError(f"{task.get_name()} stopped")
        finally:
            for pending in (keepalive, watch):
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *ETCD_ERRORS, LeaseLostError):
                        await pending

    def view(self) -> ClusterView:
        registrations = dict(self._registrations)
        registrations[self.identity] = orjson.loads(self._record())  # ours, as it is now
        return ClusterView(
            instances=frozenset(registrations),
            holders=dict(self._holders),
            hot={i: frozenset(r.get("hot", ())) for i, r in registrations.items()},
        )

    async def _act(self, rpc_timeout: float) -> None:
        view = self.view()
        wanted = assign(view, self.shards, self.standbys)
        step = plan(self.identity, view, wanted, self.ingesting)
        self._ingest(step.ingest)
        for shard in sorted(step.resign):
            await self._hand_over(shard, rpc_timeout)
        for shard in sorted(step.campaign):
            await self._campaign(shard, rpc_timeout)

    async def _campaign(self, shard: int, rpc_timeout: float) -> None:
        kv = self._client.kv
        assert kv is not None
        key = self.leader_key(shard)
        response = await kv.txn(
            [kv.txn_compare_create_revision(key, 0)],
            [kv.txn_op_put(key, self.identity, lease=self._lease_id)],
            [],
            timeout=rpc_timeout,
        )
        if not response.succeeded:
            return  # someone else was faster: the watch tells us who
        if time.monotonic() >= self.lease.deadline:
            raise LeaseLostError("won a key after our lease deadline")
        self._holders[shard] = self.identity
        self._lead(shard, response.header.revision)

    async def _hand_over(self, shard: int, rpc_timeout: float) -> None:
        """Make-before-break: the successor is hot. Stop, flush what the term sent, let go."""
        term = self.terms.get(shard)
        self._end(shard, "handover")
        if term is not None and self._before_release is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RELEASE_FLUSH_SECONDS):
                    await self._before_release(term)
        kv = self._client.kv
        assert kv is not None
        key = self.leader_key(shard)
        await kv.txn(
            [kv.txn_compare_value(key, self.identity)],
            [kv.txn_op_delete(key)],
            [],
            timeout=rpc_timeout,
        )
        log.info("handed over", service=self.service, shard=shard)

    # --- the shared view ---

    async def _load(self, rpc_timeout: float) -> int:
        kv = self._client.kv
        assert kv is not None
        response = await kv.get(
            self.base, range_end=prefix_range_end(self.base), timeout=rpc_timeout
        )
        self._registrations.clear()
        self._holders.clear()
        for item in response.kvs:
            self._take(PUT_EVENT, item.key, item.value)
        return int(response.header.revision)

    async def _follow(self, from_revision: int) -> None:
        assert self._client.watch is not None
        events = self._client.watch.watch(
            self.base, range_end=prefix_range_end(self.base), start_revision=from_revision
        )
        async for response in events:
            if response.canceled:
                raise LeaseLostError("the watch was cancelled")
            for event in response.events:
                self._take(event.type, event.kv.key, event.kv.value)
            self._changed.set()

    def _take(self, kind: int, raw_key: bytes, value: bytes) -> None:
        key = raw_key.decode(errors="replace")
        what, name = _parse_key(key, self.base, self.shards)
        if what == "instance":
            if kind == DELETE_EVENT:
                self._registrations.pop(name, None)
                return
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError:
                log.warning("bad registration", key=key)
                return
            if isinstance(record, dict):
                self._registrations[name] = record
        elif what == "shard":
            shard = int(name)
            if kind == DELETE_EVENT:
                self._holders.pop(shard, None)
                if shard in self.terms:
                    self._end(shard, "key_deleted")
            else:
                self._holders[shard] = value.decode(errors="replace")

    def _record(self) -> bytes:
        leading = sorted(self.terms)
        ingesting = sorted(self.ingesting)
        pairs = self._pairs()
        return orjson.dumps(
            {
                "id": self.info.id,
                "host": self.info.host,
                "port": self.info.port,
                "version": self.info.version,
                "started": self.info.started,
                "leading": leading,
                "epochs": {str(k): self.terms[k].epoch for k in leading},
                "standby": [k for k in ingesting if k not in self.terms],
                "hot": [k for k in ingesting if self._hot(k)],
                "pairs": {str(k): pairs.get(k, 0) for k in ingesting},
            }
        )

    async def _register(self, rpc_timeout: float) -> None:
        record = self._record()
        if record == self._registered:
            return
        kv = self._client.kv
        assert kv is not None
        await kv.put(self.registration_key, record, lease=self._lease_id, timeout=rpc_timeout)
        self._registered = record

    # --- the lease ---

    async def _keep_alive(self, lease_id: int) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            sent = time.monotonic()
            try:
                # never wait past the deadline: a late answer must not revive a lost lease
                async with asyncio.timeout(max(0.05, min(interval, self.lease.deadline - sent))):
                    granted = await self._refresh(lease_id)
            except ETCD_ERRORS as exc:
                if time.monotonic() >= self.lease.deadline:
                    raise LeaseLostError(f"keep-alive failed past the TTL: {exc!r}") from exc
                log.warning("lease keep-alive failed; retrying", error=repr(exc))
                interval = min(0.5, interval)
                continue
            if granted <= 0:
                raise LeaseLostError("etcd reports the lease expired")
            if time.monotonic() >= self.lease.deadline:
                raise LeaseLostError("keep-alive answered after the deadline")
            self._extend(sent + granted)
            interval = self.ttl / 3

    async def _refresh(self, lease_id: int) -> int:
        assert self._client.lease is not None
        stream = self._client.lease.keep_alive(lease_id)
        try:
            async for response in stream:
                return int(response.TTL)
        finally:
            stream.cancel()
        return 0

    def _extend(self, deadline: float) -> None:
        self.lease.deadline = deadline
        if self._watchdog is not None:
            self._watchdog.cancel()
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(
            loop.time() + (deadline - time.monotonic()), self._on_deadline
        )

    def _on_deadline(self) -> None:
        if time.monotonic() >= self.lease.deadline:
            self.step_down("lease_deadline")
        else:  # uvloop's clock has millisecond steps: the timer may fire a hair early
            self._extend(self.lease.deadline)

    async def _release_lease(self) -> None:
        lease_id, self._lease_id = self._lease_id, 0
        self.lease.deadline = 0.0
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if lease_id and self._client.lease is not None:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(lease_id, timeout=1.0, max_attempts=1)


def _parse_key(key: str, base: str, shards: int) -> tuple[str, str]:
    """``<base>instances/<id>`` -> ("instance", id); a shard's leader key -> ("shard", "k")."""
    rest = key[len(base) :] if key.startswith(base) else ""
    if rest.startswith("instances/"):
        return "instance", rest[len("instances/") :]
    if shards == 1 and rest == "leader":
        return "shard", "0"
    parts = rest.split("/")
    if shards > 1 and len(parts) == 3 and parts[::2] == ["shards", "leader"] and parts[1].isdigit():
        return "shard", parts[1]
    return "other", rest


def _reason(exc: Exception) -> str:
    if isinstance(exc, LeaseLostError):
        return "lease_lost"
    return "etcd_error" if isinstance(exc, ETCD_ERRORS) else "error"


def host_port(endpoint: str) -> str:
    """``http://host:port`` (the settings' form) -> ``host:port`` (gRPC's)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return f"{parts.hostname}:{parts.port or 2379}"


def make_election(
    settings: Settings,
    service: str,
    on_change: LeadershipCallback | None = None,
    *,
    shards: int = 1,
    on_ingest: IngestCallback | None = None,
    hot: HotCheck | None = None,
    pairs: Callable[[], Mapping[int, int]] | None = None,
    before_release: ReleaseHook | None = None,
    info: InstanceInfo | None = None,
) -> Leadership:
    if not settings.etcd_endpoints:
        return StaticLeader(service, on_change, shards, on_ingest)
    return EtcdElection(
        settings.etcd_endpoints,
        service,
        settings.leader_ttl_seconds,
        on_change,
        identity=info.id if info is not None else None,
        shards=shards,
        standbys=settings.standbys_per_shard,
        info=info,
        on_ingest=on_ingest,
        hot=hot,
        pairs=pairs,
        before_release=before_release,
    )
