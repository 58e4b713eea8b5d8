"""Leader election: exactly one instance of a service publishes; the others keep hot state.

Usage::

    election = make_election(settings, "orderbook", on_change)   # on_change(term)
    await election.start(tasks)   # returns at once; campaigning runs under the supervisor
    election.term                 # the current Term (marketpipe.ha.term) or None: following
    election.epoch                # grows with each new leader
    await election.resign()       # on shutdown: a follower takes over at once

``on_change`` is called with the new :class:`~marketpipe.ha.term.Term` when this instance
starts leading, and with the same term, ended (``term.ended``, ``term.reason``), when it stops.

With ``ETCD_ENDPOINTS`` empty, :class:`StaticLeader` is always leader; its epoch is the start time
in milliseconds (it still grows across restarts).

:class:`EtcdElection` is a small recipe on etcd's primitives (etcd3aio's own ``Election`` does not
keep its lease alive): grant a lease of ``leader_ttl_seconds`` → keep it alive → transaction
"create ``/marketpipe/<service>/leader`` if its create_revision is 0" → the winner leads with
``epoch`` = the key's create_revision; the others watch the key for DELETE and try again.

Safety: the leader keeps a local lease deadline (send time of the last successful keep-alive +
the TTL etcd granted) in the term's :class:`~marketpipe.ha.term.LeaseClock`. The server's own
expiry is later than that, so a leader whose keep-alives fail (etcd paused, partitioned, dead)
steps down by a timer at its deadline, before any follower can win; and ``term.valid()`` reads
the deadline itself, so a write checked against the term is refused past it even before the
timer has run. Stepping down is synchronous: the term ends and ``on_change`` runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import grpc.aio
from etcd3aio import Etcd3Client, EtcdError, WatchFilter

from marketpipe.config import Settings
from marketpipe.ha.term import LeaseClock, Term
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import IS_LEADER, LEADER_EPOCH, LEADER_TRANSITIONS
from marketpipe.supervision import Supervised, Supervisor

log = get_logger("marketpipe.ha.election")

LeadershipCallback = Callable[[Term], None]
# Terms that end for these reasons end by choice, with everything sent: the others may leave
# bytes of the old term in flight (see ServiceContext).
VOLUNTARY_REASONS = frozenset({"resign"})

DELETE_EVENT = 1  # mvccpb.Event.EventType.DELETE
ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)


class Leadership(Protocol):
    term: Term | None
    epoch: int

    @property
    def is_leader(self) -> bool: ...

    async def start(self, tasks: Supervisor) -> None: ...

    def step_down(self, reason: str) -> None: ...

    async def resign(self) -> None: ...


class LeaseLostError(Exception):
    """The lease could not be kept alive until its deadline (or etcd says it expired)."""


class _Role:
    """The state every implementation shares: the term, the epoch, metrics and the callback."""

    def __init__(self, service: str, on_change: LeadershipCallback | None) -> None:
        self.service = service
        self.term: Term | None = None
        self.epoch = 0
        self.lease = LeaseClock()
        self._on_change = on_change

    @property
    def is_leader(self) -> bool:
        return self.term is not None and self.term.valid()

    def _lead(self, epoch: int) -> None:
        self.epoch = epoch
        self.term = Term(epoch, self.lease)
        IS_LEADER.set(1)
        LEADER_EPOCH.set(epoch)
        LEADER_TRANSITIONS.labels("leader", "elected").inc()
        log.info("leading", service=self.service, epoch=epoch)
        if self._on_change is not None:
            self._on_change(self.term)

    def step_down(self, reason: str) -> None:
        """End the current term now (if any); ``reason`` says why (see VOLUNTARY_REASONS)."""
        term, self.term = self.term, None
        if term is None:
            return
        term.end(reason)
        IS_LEADER.set(0)
        LEADER_TRANSITIONS.labels("follower", reason).inc()
        log.warning("stepped down", service=self.service, epoch=term.epoch, reason=reason)
        if self._on_change is not None:
            self._on_change(term)


class StaticLeader(_Role):
    """No etcd configured: this instance is the only one, always leader."""

    async def start(self, tasks: Supervisor) -> None:
        self._lead(int(time.time() * 1000))

    async def resign(self) -> None:
        self.step_down("resign")


class EtcdElection(_Role):
    def __init__(
        self,
        endpoints: Sequence[str],
        service: str,
        ttl: int = 5,
        on_change: LeadershipCallback | None = None,
        identity: str | None = None,
    ) -> None:
        super().__init__(service, on_change)
        self.key = f"/marketpipe/{service}/leader"
        self.ttl = ttl
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self._client = Etcd3Client(
            [_host_port(e) for e in endpoints],
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
        )
        self._lease_id = 0
        self.lease.deadline = 0.0  # monotonic time our lease surely still lives until
        self._watchdog: asyncio.TimerHandle | None = None
        self._task: Supervised | None = None

    async def start(self, tasks: Supervisor) -> None:
        await self._client.connect()
        # It catches every error itself: if it still ends, no term may outlive it.
        self._task = tasks.spawn(f"election-{self.service}", self._campaign_forever, restart=False)

    async def resign(self) -> None:
        """Stop campaigning, stop leading now, and revoke the lease so a follower wins at once."""
        if self._task is not None:
            await self._task.stop()
            self._task = None
        self.step_down("resign")
        await self._release_lease()
        await self._client.close()

    # --- the campaign ---

    async def _campaign_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._term()
                backoff = 0.1
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
                backoff = min(backoff * 2, self.ttl / 2)
            await self._release_lease()
            await asyncio.sleep(backoff)

    async def _term(self) -> None:
        """One lease's life: campaign with it until we lose it or lose leadership."""
        rpc_timeout = max(1.0, self.ttl / 2)
        sent = time.monotonic()
        lease = await self._client.lease.grant(self.ttl, timeout=rpc_timeout)  # type: ignore[union-attr]
        self._lease_id = lease.ID
        self._extend(sent + lease.TTL)
        keepalive = asyncio.create_task(self._keep_alive(lease.ID), name="election-keepalive")
        try:
            while True:
                kv = self._client.kv
                assert kv is not None
                response = await kv.txn(
                    [kv.txn_compare_create_revision(self.key, 0)],
                    [kv.txn_op_put(self.key, self.identity, lease=lease.ID)],
                    [kv.txn_op_get(self.key)],
                    timeout=rpc_timeout,
                )
                revision = response.header.revision
                if response.succeeded:
                    if time.monotonic() >= self.lease.deadline:
                        raise LeaseLostError("won the key after our lease deadline")
                    self._lead(revision)
                    await self._until_deleted_or_lost(keepalive, revision + 1, None)
                    self.step_down("key_deleted")
                    return
                holder = response.responses[0].response_range.kvs
                log.debug(
                    "following",
                    service=self.service,
                    leader=holder[0].value.decode(errors="replace") if holder else None,
                )
                await self._until_deleted_or_lost(keepalive, revision + 1, float(self.ttl))
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ETCD_ERRORS, LeaseLostError):
                await keepalive

    async def _until_deleted_or_lost(
        self, keepalive: asyncio.Task[None], from_revision: int, give_up_after: float | None
    ) -> None:
        """Wait for the key's DELETE (or ``give_up_after`` s); raise if the keep-alive fails."""
        watch = asyncio.create_task(self._wait_delete(from_revision), name="election-watch")
        try:
            await asyncio.wait(
                {keepalive, watch}, timeout=give_up_after, return_when="FIRST_COMPLETED"
            )
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ETCD_ERRORS):
                await watch
        if keepalive.done():
            keepalive.result()  # raises LeaseLostError or the etcd error
            raise LeaseLostError("keep-alive stopped")

    async def _wait_delete(self, from_revision: int) -> None:
        assert self._client.watch is not None
        events = self._client.watch.watch(
            self.key, start_revision=from_revision, filters=[WatchFilter.NOPUT]
        )
        async for response in events:
            if response.canceled or any(e.type == DELETE_EVENT for e in response.events):
                return

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


def _reason(exc: Exception) -> str:
    if isinstance(exc, LeaseLostError):
        return "lease_lost"
    return "etcd_error" if isinstance(exc, ETCD_ERRORS) else "error"


def _host_port(endpoint: str) -> str:
    """``http://host:port`` (the settings' form) -> ``host:port`` (gRPC's)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return f"{parts.hostname}:{parts.port or 2379}"


def make_election(
    settings: Settings, service: str, on_change: LeadershipCallback | None = None
) -> Leadership:
    if not settings.etcd_endpoints:
        return StaticLeader(service, on_change)
    return EtcdElection(settings.etcd_endpoints, service, settings.leader_ttl_seconds, on_change)
