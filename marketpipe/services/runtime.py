"""The one place a service's lifecycle lives; each service module is a short wiring on top.

A service module's ``run`` is typically::

    def run(args: argparse.Namespace, settings: Settings) -> int:
        return run_service("trades", args, settings, TradesService)

where ``TradesService(ctx)`` builds itself from a :class:`ServiceContext` and offers
``async start()`` (begin taking data; return once running), ``async stop()`` (stop taking data),
``ready() -> bool`` (cheap, for ``/readyz``) and optionally ``on_term(term)`` (synchronous;
called the moment a leadership term starts or ends, e.g. to restart ``seq`` on a new epoch).
A sharded service (``run_service(..., sharded=True)``: orderbook, trades, tickers; DESIGN §9)
also offers ``on_ingest(shards)`` (keep exactly the pairs of these shards), ``shard_hot(shard)``
(are all its pairs in sync) and ``shard_pairs()`` (pairs per ingested shard); it publishes each
pair under ``ctx.term_for(ctx.shard_of(symbol))``.
A service starts its long-lived tasks with ``ctx.tasks.spawn(...)`` (:mod:`marketpipe.supervision`):
one that fails is restarted, or takes the instance down (liveness fails, terms end, exit 1).

:func:`run_service` installs uvloop, starts HTTP on ``--port`` (``/livez``, ``/readyz``,
``/metrics``; the factory may add routes to ``ctx.app`` first, as the gateway does), connects
NATS (retrying forever), starts the Redis cache and the election, then waits for SIGTERM/SIGINT.
On the signal: ``service.stop()``, drain NATS, flush Redis (best effort), resign leadership,
exit 0, all within :data:`SHUTDOWN_SECONDS`.

Publishing goes through the context, which drops everything while this instance is not the
leader (followers keep hot state, publish nothing)::

    if ctx.publish("trades.BTCUSDT", payload):     # False: not leader (or refused), not sent
        ctx.cache_recent(trades_key("BTCUSDT"), payload)  # also leader-gated, never blocks

Fencing (DESIGN §8): each write is tied to the leadership term it is made under (``ctx.term``,
or the ``term`` given), and the transports let it out only while that term lasts. When a term
ends, what is still queued for it is discarded, for NATS and for Redis; when it ends by losing
the lease (not by resigning), the NATS connection is also reset, so that bytes of the term
already in a stalled socket never arrive. Redis writes are conditional on the epoch.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import uvloop
from aiohttp import web

from marketpipe.config import Settings
from marketpipe.ha.assignment import shard_of
from marketpipe.ha.election import (
    VOLUNTARY_REASONS,
    InstanceInfo,
    Leadership,
    StaticLeader,
    make_election,
)
from marketpipe.ha.term import Term
from marketpipe.logs import get_logger
from marketpipe.ops.http import ProbeServer
from marketpipe.supervision import Supervisor
from marketpipe.transport.nats import NatsClient
from marketpipe.transport.redis_cache import RECENT_KEEP, RedisCache

log = get_logger("marketpipe.services.runtime")

SHUTDOWN_SECONDS = 9.0
CACHE_FLUSH_SECONDS = 0.05


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...


ServiceFactory = Callable[["ServiceContext"], Service]


class ServiceContext:
    """What every service shares: settings, NATS, the Redis cache, an HTTP client session, the
    supervisor, the leadership terms by shard, and the term-gated ways out (``publish``,
    ``cache_*``)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        use_redis: bool = True,
        elect: bool = True,
        sharded: bool = False,
        port: int = 0,
        cache_flush_seconds: float = CACHE_FLUSH_SECONDS,
    ) -> None:
        self.name = name
        self.settings = settings
        self.shards = settings.shards if sharded else 1
        self.app = web.Application()
        self.nats = NatsClient(
            settings.nats_urls, settings.subject_prefix, name=name, drain_seconds=2.0
        )
        self.cache: RedisCache | None = (
            RedisCache(
                settings.redis_url,
                settings.redis_prefix,
                writer=name,
                flush_interval=cache_flush_seconds,
            )
            if use_redis
            else None
        )
        self.http = aiohttp.ClientSession()
        self.tasks = Supervisor(name, on_fatal=self.fail)
        self.service: Any = None  # set by attach(): the hooks below reach it through this
        self.terms: dict[int, Term] = {}  # shard -> current term; none: following
        self.ingesting: frozenset[int] = frozenset()
        self.epoch = 0  # the newest term's
        info = InstanceInfo(f"{socket.gethostname()}:{port}:{os.getpid()}", port=port)
        self.leadership: Leadership = (
            make_election(
                settings,
                name,
                self._on_term,
                shards=self.shards,
                on_ingest=self._on_ingest,
                hot=self._shard_hot,
                pairs=self._shard_pairs,
                before_release=self._before_release,
                info=info,
            )
            if elect
            else StaticLeader(name, self._on_term, self.shards, self._on_ingest)
        )
        self.exit_code = 0
        self.stopping = asyncio.Event()

    def attach(self, service: Service) -> None:
        self.service = service

    @property
    def term(self) -> Term | None:
        """The current term of shard 0 (the only shard of an unsharded service)."""
        return self.terms.get(0)

    def term_for(self, shard: int) -> Term | None:
        return self.terms.get(shard)

    def shard_of(self, symbol: str) -> int:
        return shard_of(symbol, self.shards)

    def ingests(self, symbol: str) -> bool:
        """Whether this instance keeps ``symbol`` (it leads or stands by for its shard)."""
        return shard_of(symbol, self.shards) in self.ingesting

    @property
    def leading(self) -> bool:
        return any(term.valid() for term in self.terms.values())

    @property
    def live(self) -> bool:
        """False once a supervised task failed for good (``/livez`` then fails)."""
        return self.tasks.healthy

    # --- the hot path ---

    def publish(self, subject: str, payload: bytes, term: Term | None = None) -> bool:
        """Publish under ``term`` (default: the current one) while it lasts; queued for the
        socket, no await. Returns whether it was queued (False: not leader, or refused and
        counted by the client). Raises PayloadTooLargeError."""
        term = term or self.term
        if term is None or not term.valid():
            return False
        return self.nats.publish_now(subject, payload, term)

    def cache_value(self, key: str, payload: bytes, *, term: Term | None = None) -> None:
        term = term or self.term
        if self.cache is not None and term is not None and term.valid():
            self.cache.set_value(key, payload, term)

    def cache_recent(
        self,
        key: str,
        payload: bytes,
        keep: int = RECENT_KEEP,
        *,
        term: Term | None = None,
        order: int | None = None,
    ) -> None:
        term = term or self.term
        if self.cache is not None and term is not None and term.valid():
            self.cache.push_recent(key, payload, keep, term, order)

    def cache_catch_up_recent(
        self, key: str, items: list[bytes], order_field: str, *, term: Term | None = None
    ) -> None:
        term = term or self.term
        if self.cache is not None and term is not None and term.valid():
            self.cache.catch_up_recent(key, items, order_field, term=term)

    def cache_fields(self, name: str, mapping: dict[str, bytes]) -> None:
        term = self.term
        if self.cache is not None and term is not None and term.valid():
            self.cache.hset_many(name, mapping, term)

    def cache_delete_fields(self, name: str, fields: list[str]) -> None:
        term = self.term
        if self.cache is not None and term is not None and term.valid():
            self.cache.hdel(name, fields, term)

    # --- lifecycle hooks ---

    def request_stop(self, exit_code: int = 0, reason: str = "") -> None:
        """End the process as SIGTERM would (a service that cannot go on passes exit_code=1)."""
        if reason:
            log.error("service asked to stop", service=self.name, reason=reason)
        self.exit_code = max(self.exit_code, exit_code)
        self.stopping.set()

    def fail(self, task: str, error: BaseException | None) -> None:
        """A supervised task failed for good: no term may outlive it. Liveness fails at once,
        leadership ends at once (resigned in the shutdown), and the process exits 1."""
        log.critical("instance failed", service=self.name, task=task, error=repr(error))
        self.leadership.step_down("task_failed")
        self.request_stop(1, f"task {task} failed")

    def _on_term(self, term: Term) -> None:
        if not term.ended:
            self.terms[term.shard] = term
            self.epoch = max(self.epoch, term.epoch)
        else:
            if self.terms.get(term.shard) is term:
                del self.terms[term.shard]
            self._fence(term)
        self._call("on_term", term)

    def _on_ingest(self, shards: frozenset[int]) -> None:
        self.ingesting = shards
        self._call("on_ingest", shards)

    def _shard_hot(self, shard: int) -> bool:
        hot = getattr(self.service, "shard_hot", None)
        return bool(hot(shard)) if hot is not None else True

    def _shard_pairs(self) -> Mapping[int, int]:
        pairs = getattr(self.service, "shard_pairs", None)
        return pairs() if pairs is not None else {}

    async def _before_release(self, term: Term) -> None:
        await self.nats.flush()  # what the term sent is on the server before its key goes

    def _call(self, hook: str, argument: object) -> None:
        method = getattr(self.service, hook, None)
        if method is None:
            return
        try:
            method(argument)
        except Exception:  # a hook's bug must not leave the gate in a wrong state
            log.exception("service hook failed", service=self.name, hook=hook)

    def _fence(self, term: Term) -> None:
        """``term`` ended: nothing it queued may reach NATS or Redis any more."""
        dropped = self.nats.discard(term)
        if self.cache is not None:
            dropped += self.cache.discard(term)
        if term.reason not in VOLUNTARY_REASONS:
            # Bytes of the term may sit in a stalled socket: abort it (RST) rather than let them
            # arrive after a newer leader's. The reconnect takes milliseconds.
            self.nats.reset_connection()
        log.info(
            "term fenced",
            service=self.name,
            shard=term.shard,
            epoch=term.epoch,
            reason=term.reason,
            dropped=dropped,
        )


def run_service(
    name: str,
    args: argparse.Namespace,
    settings: Settings,
    factory: ServiceFactory,
    *,
    use_redis: bool = True,
    elect: bool = True,
    sharded: bool = False,
    cache_flush_seconds: float = CACHE_FLUSH_SECONDS,
) -> int:
    """Run a service until SIGTERM/SIGINT; returns the process exit code.

    ``cache_flush_seconds``: how often the Redis cache writes what changed (a key is written at
    most once per period, and its last value always lands).
    """
    make_context = functools.partial(
        ServiceContext,
        name,
        settings,
        use_redis=use_redis,
        elect=elect,
        sharded=sharded,
        port=int(args.port),
        cache_flush_seconds=cache_flush_seconds,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(name, int(args.port), settings, factory, make_context))


async def _serve(
    name: str,
    port: int,
    settings: Settings,
    factory: ServiceFactory,
    make_context: Callable[[], ServiceContext],
) -> int:
    ctx = make_context()  # inside the loop: it creates asyncio and aiohttp objects
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.request_stop)
    service = factory(ctx)
    ctx.attach(service)

    def ready() -> bool:
        return ctx.live and ctx.nats.connected and service.ready()

    probes = ProbeServer(port, ready, host=settings.http_host, app=ctx.app, live=lambda: ctx.live)
    await probes.start()
    log.info("service starting", service=name, port=probes.port)
    startup = asyncio.create_task(_start(ctx, service), name=f"{name}-startup")
    stopping = asyncio.create_task(ctx.stopping.wait())
    await asyncio.wait({startup, stopping}, return_when="FIRST_COMPLETED")
    if startup.done() and startup.exception() is not None:
        log.error("service failed to start", service=name, error=repr(startup.exception()))
        ctx.exit_code = 1
    elif not startup.done():
        startup.cancel()
    else:
        log.info("service running", service=name)
        await stopping
    stopping.cancel()
    await _shutdown(ctx, service, probes, startup.done())
    log.info("service stopped", service=name, exit_code=ctx.exit_code)
    return ctx.exit_code


async def _start(ctx: ServiceContext, service: Service) -> None:
    await ctx.nats.connect()
    if ctx.cache is not None:
        await ctx.cache.start(ctx.tasks)
    await service.start()
    await ctx.leadership.start(ctx.tasks)
    # What exists now lives as long as the process: out of the collector's sight, a full
    # collection no longer walks it (~40 ms with 2000 books, a stall in every latency).
    gc.collect()
    gc.freeze()


async def _shutdown(
    ctx: ServiceContext, service: Service, probes: ProbeServer, started: bool
) -> None:
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_SECONDS

    async def step(what: str, action: Awaitable[None], share: float) -> None:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.1, min(share, remaining))):
                await action
        except Exception as exc:
            log.warning("shutdown step incomplete", step=what, error=repr(exc))

    if started:
        await step("stop service", service.stop(), 3.0)
    await step("drain nats", ctx.nats.drain(), 2.5)
    if ctx.cache is not None:
        await step("flush redis", ctx.cache.close(), 1.5)
    await step("resign", ctx.leadership.resign(), 1.5)
    await step("stop tasks", ctx.tasks.stop(), 0.5)
    await step("close http", ctx.http.close(), 0.5)
    await step("stop probes", probes.stop(), 0.5)
