"""``StreamHub``: all exchange WebSocket connections of one service (the asyncio shell).

Decisions live in :class:`~marketpipe.exchange.stream_plan.StreamPlan`; this module only moves
frames: it opens and closes links, sends the control messages the plan asks for, answers pings,
and reports what the wire does back to the plan. Each data frame goes, whole and undecoded, to
``on_frame(raw)``, called synchronously in the link's reader task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import aiohttp
import orjson

from marketpipe.exchange.stream_plan import (
    Action,
    CloseLink,
    OpenLink,
    SendControl,
    StreamPlan,
    StreamsDown,
    StreamsUp,
)
from marketpipe.logs import get_logger
from marketpipe.ops.metrics import (
    BAD_INPUT,
    EXCHANGE_MESSAGES,
    STREAM_CONNECTIONS,
    STREAM_RECONNECTS,
)

log = get_logger(__name__)

OnFrame = Callable[[bytes], None]
OnStreams = Callable[[frozenset[str]], None]

_STREAM_PREFIX = b'{"stream":"'
SHUTDOWN_STREAM = "!serverShutdown"
TICK_SECONDS = 0.25
CLOSE_TIMEOUT_SECONDS = 2.0
# Frames a link handles before it lets the rest of the loop run (~0.3 ms of order book work).
FRAMES_PER_TURN = 32


def stream_name(raw: bytes) -> str | None:
    """The ``stream`` of a combined frame, taken from the frame's first bytes."""
    if raw.startswith(_STREAM_PREFIX):
        end = raw.find(b'"', len(_STREAM_PREFIX))
        if end > 0:
            return raw[len(_STREAM_PREFIX) : end].decode()
    return None


def stream_kind(stream: str) -> str:
    """``btcusdt@depth@100ms`` -> ``depth``: a metric label that does not grow with pairs."""
    _, _, rest = stream.partition("@")
    return rest.split("@", 1)[0] or stream


def ignore(_streams: frozenset[str]) -> None:
    return None


class StreamHub:
    def __init__(
        self,
        ws_base_url: str,
        on_frame: OnFrame,
        *,
        on_streams_down: OnStreams = ignore,
        on_streams_up: OnStreams = ignore,
        plan: StreamPlan | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.ws_base_url = ws_base_url.rstrip("/")
        self.plan = plan or StreamPlan()
        self._on_frame = on_frame
        self._on_down = on_streams_down
        self._on_up = on_streams_up
        self._session = session
        self._owns_session = session is None
        self._sockets: dict[int, aiohttp.ClientWebSocketResponse[Literal[False]]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._counters: dict[str, Any] = {}  # stream name -> its kind's labelled counter

    # What the consumer wants.
    def set_streams(self, streams: Iterable[str]) -> None:
        self.plan.set_streams(streams)
        self._wakeup.set()

    def add(self, streams: Iterable[str]) -> None:
        self.plan.add(streams)
        self._wakeup.set()

    def remove(self, streams: Iterable[str]) -> None:
        self.plan.remove(streams)
        self._wakeup.set()

    def resubscribe(self, streams: Iterable[str]) -> None:
        """Subscribe these streams afresh on their links (see ``StreamPlan.resubscribe``)."""
        for stream in streams:
            self.plan.resubscribe(stream)
        self._wakeup.set()

    @property
    def connected_links(self) -> int:
        return len(self._sockets)

    async def run(self) -> None:
        """Keep the connections as planned until cancelled, then close them all."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                for action in self.plan.tick(loop.time()):
                    await self._execute(action)
                self._wakeup.clear()
                # Not asyncio.wait_for: on 3.11 it swallows a cancel that coincides with the
                # wake-up, and the hub would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_SECONDS):
                        await self._wakeup.wait()
        finally:
            await self._shutdown()

    async def _execute(self, action: Action) -> None:
        match action:
            case OpenLink(link_id, streams, reason):
                if reason != "initial":
                    STREAM_RECONNECTS.labels(reason=reason).inc()
                log.info("stream_link_open", link=link_id, streams=len(streams), reason=reason)
                task = asyncio.create_task(self._run_link(link_id, streams), name=f"link-{link_id}")
                self._tasks[link_id] = task
                task.add_done_callback(functools.partial(self._forget_task, link_id))
            case SendControl(link_id, request_id, method, streams):
                ws = self._sockets.get(link_id)
                if ws is not None and not ws.closed:
                    body = {"method": method, "params": list(streams), "id": request_id}
                    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                        # A JSON text frame: the exchange answers a binary one with an error.
                        await ws.send_str(orjson.dumps(body).decode())
            case CloseLink(link_id, reason):
                log.info("stream_link_close", link=link_id, reason=reason)
                self._close_link(link_id)
            case StreamsDown(streams, reason):
                log.warning("streams_down", count=len(streams), reason=reason)
                self._notify(self._on_down, streams)
            case StreamsUp(streams):
                self._notify(self._on_up, streams)

    def _forget_task(self, link_id: int, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(link_id, None)

    def _notify(self, callback: OnStreams, streams: frozenset[str]) -> None:
        try:
            callback(streams)
        except Exception:
            log.exception("stream_callback_failed")

    def _close_link(self, link_id: int) -> None:
        ws = self._sockets.pop(link_id, None)
        task = self._tasks.get(link_id)
        if ws is None:
            if task is not None:
                task.cancel()  # still connecting
            return
        closer = asyncio.create_task(self._close_socket(ws, task))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_socket(
        self, ws: aiohttp.ClientWebSocketResponse[Literal[False]], task: asyncio.Task[None] | None
    ) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_SECONDS)
        if task is not None and not task.done():
            task.cancel()

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _run_link(self, link_id: int, streams: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        url = f"{self.ws_base_url}/stream"
        params = {"streams": "/".join(streams)} if streams else None
        reason = "closed"
        try:
            ws = await self._session_or_new().ws_connect(
                url, params=params, autoping=False, decode_text=False, heartbeat=None
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("stream_connect_failed", link=link_id, error=f"{type(exc).__name__}: {exc}")
            self.plan.on_closed(link_id, loop.time(), "connect_failed")
            self._wakeup.set()
            return
        self._sockets[link_id] = ws
        STREAM_CONNECTIONS.inc()
        self.plan.on_open(link_id, loop.time())
        self._wakeup.set()
        turn = 0
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._on_raw(link_id, msg.data, loop.time())
                    turn += 1
                    if turn == FRAMES_PER_TURN:
                        # A connection's backlog is read without suspending: hand the loop
                        # over now and then, or other links and publishers wait for all of it.
                        turn = 0
                        await asyncio.sleep(0)
                elif msg.type is aiohttp.WSMsgType.PING:
                    # Answered by hand (not autoping) so pings count as signs of life.
                    await ws.pong(msg.data)
                    self.plan.on_ping(link_id, loop.time())
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = "error"
                    break
            if ws.close_code not in (None, 1000):
                reason = f"closed_{ws.close_code}"
        finally:
            STREAM_CONNECTIONS.dec()
            self._sockets.pop(link_id, None)
            with contextlib.suppress(Exception):
                await ws.close()
            self.plan.on_closed(link_id, loop.time(), reason)
            self._wakeup.set()

    def _on_raw(self, link_id: int, raw: bytes, now: float) -> None:
        name = stream_name(raw)
        if name is None or name == SHUTDOWN_STREAM:
            self.plan.on_frame(link_id, None, now)
            self._on_other(link_id, raw, now)
            return
        self._deliver(link_id, name, raw, now)

    def _deliver(self, link_id: int, name: str, raw: bytes, now: float) -> None:
        self.plan.on_frame(link_id, name, now)
        counter = self._counters.get(name)
        if counter is None:  # once per stream: the label is its kind, resolved once
            counter = self._counters[name] = EXCHANGE_MESSAGES.labels(stream=stream_kind(name))
        counter.inc()
        try:
            self._on_frame(raw)
        except Exception:
            # A consumer bug must not take the connection (and every other pair) down.
            BAD_INPUT.labels(source="exchange_ws", kind="consumer_error").inc()
            log.exception("stream_consumer_failed", stream=name)

    def _on_other(self, link_id: int, raw: bytes, now: float) -> None:
        """Control replies, ``serverShutdown`` and anything unexpected."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            BAD_INPUT.labels(source="exchange_ws", kind="not_json_object").inc()
            log.warning("stream_bad_frame", link=link_id, head=raw[:200])
            return
        event = message.get("data", message)
        stream = message.get("stream")
        if isinstance(event, dict) and event.get("e") == "serverShutdown":
            log.info("stream_server_shutdown", link=link_id)
            self.plan.on_shutdown_notice(link_id)
            self._wakeup.set()
        elif isinstance(stream, str) and "data" in message:  # a data frame laid out unusually
            self._deliver(link_id, stream, raw, now)
        elif "id" in message and ("result" in message or "error" in message):
            self._on_reply(link_id, message)
        else:
            BAD_INPUT.labels(source="exchange_ws", kind="unknown_frame").inc()
            log.warning("stream_unknown_frame", link=link_id, head=raw[:200])

    def _on_reply(self, link_id: int, message: dict[str, Any]) -> None:
        error = message.get("error")
        request_id = message.get("id")
        detail = None if error is None else str(error)
        if error is not None:
            BAD_INPUT.labels(source="exchange_ws", kind="control_error").inc()
            log.warning("stream_control_error", link=link_id, id=request_id, error=detail)
        if not isinstance(request_id, int) or not self.plan.on_reply(link_id, request_id, detail):
            log.warning("stream_unmatched_reply", link=link_id, id=request_id)
        self._wakeup.set()

    async def _shutdown(self) -> None:
        for link_id in list(self._sockets):
            self._close_link(link_id)
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._closers, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
