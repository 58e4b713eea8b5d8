"""Polling an external JSON API: keep the last good value, reject bad payloads whole.

Shared by the assets and settings clients. The parser is pure and raises
:class:`PayloadRejected`; the poller only fetches, counts and calls back when the value changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aiohttp
import orjson

from marketpipe.logs import get_logger
from marketpipe.ops.metrics import BAD_INPUT, SETTINGS_REJECTED

log = get_logger(__name__)

T = TypeVar("T")


class PayloadRejected(ValueError):
    """The payload does not have the documented shape; nothing of it is used."""


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        body = await resp.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadRejected(f"not JSON: {exc}") from exc


class Poller(Generic[T]):
    """Every ``interval`` seconds: ``fetch()``, ``parse()``, and ``on_change(value)`` if new."""

    def __init__(
        self,
        source: str,
        fetch: Callable[[], Awaitable[Any]],
        parse: Callable[[Any], T],
        on_change: Callable[[T], None],
        interval: float,
    ) -> None:
        self.source = source
        self._fetch = fetch
        self._parse = parse
        self._on_change = on_change
        self.interval = interval
        self.value: T | None = None

    async def poll_once(self) -> bool:
        """True when a good payload was read (changed or not)."""
        try:
            value = self._parse(await self._fetch())
        except PayloadRejected as exc:
            SETTINGS_REJECTED.labels(source=self.source).inc()
            BAD_INPUT.labels(source=self.source, kind="rejected_payload").inc()
            log.warning("payload_rejected", source=self.source, error=str(exc))
            return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("poll_failed", source=self.source, error=f"{type(exc).__name__}: {exc}")
            return False
        if value != self.value:
            self.value = value
            log.info("source_changed", source=self.source)
            self._on_change(value)
        return True

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)
