"""Per-pair book settings from the settings API (DESIGN §5): ``MaxSpreadPct`` and ``Depth``.

``parse_settings`` is pure and all-or-nothing; :class:`SettingsSource` polls and answers
``settings_for(symbol)`` from the last good payload (or the configured defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from marketpipe.config import Settings, normalise_symbol
from marketpipe.sources.polling import PayloadRejected, Poller, get_json

SOURCE = "settings"
DEFAULT_KEY = "DEFAULT"
MAX_SPREAD_KEY = "MaxSpreadPct"
DEPTH_KEY = "Depth"


@dataclass(frozen=True)
class SymbolSettings:
    max_spread_pct: float
    depth: int


@dataclass(frozen=True)
class SettingsTable:
    default: SymbolSettings
    overrides: Mapping[str, SymbolSettings] = field(default_factory=dict)

    def settings_for(self, symbol: str) -> SymbolSettings:
        return self.overrides.get(symbol, self.default)


def _entry(key: str, value: Any, base: SymbolSettings) -> SymbolSettings:
    if not isinstance(value, dict):
        raise PayloadRejected(f"{key}: must be an object")
    unknown = set(value) - {MAX_SPREAD_KEY, DEPTH_KEY}
    if unknown:
        raise PayloadRejected(f"{key}: unknown keys {sorted(unknown)}")
    spread = value.get(MAX_SPREAD_KEY, base.max_spread_pct)
    depth = value.get(DEPTH_KEY, base.depth)
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not 0 < spread <= 100:
        raise PayloadRejected(f"{key}.{MAX_SPREAD_KEY}: {spread!r} is not a number in (0, 100]")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5000:
        raise PayloadRejected(f"{key}.{DEPTH_KEY}: {depth!r} is not an integer in 1..5000")
    return SymbolSettings(float(spread), depth)


def parse_settings(payload: Any, fallback: SymbolSettings) -> SettingsTable:
    """Per-symbol keys override ``DEFAULT``, which overrides ``fallback`` (the configuration)."""
    if not isinstance(payload, dict):
        raise PayloadRejected("settings payload must be a JSON object")
    default = _entry(DEFAULT_KEY, payload.get(DEFAULT_KEY, {}), fallback)
    overrides: dict[str, SymbolSettings] = {}
    for key, value in payload.items():
        if key == DEFAULT_KEY:
            continue
        symbol = normalise_symbol(key)
        if not symbol.isalnum():
            raise PayloadRejected(f"{key!r} is not a pair")
        overrides[symbol] = _entry(key, value, default)
    return SettingsTable(default, overrides)


def default_settings(settings: Settings) -> SymbolSettings:
    return SymbolSettings(settings.default_max_spread_pct, settings.default_depth)


class SettingsSource:
    """``settings_for(symbol)``; polls ``SETTINGS_URL`` when one is configured."""

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[SettingsTable], None] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self._fallback = default_settings(settings)
        self._session = session
        self._on_change = on_change
        self.poller: Poller[SettingsTable] = Poller(
            SOURCE, self._fetch, self._parse, self._changed, settings.settings_poll_seconds
        )
        self.table = SettingsTable(self._fallback)

    def settings_for(self, symbol: str) -> SymbolSettings:
        return self.table.settings_for(symbol)

    def _changed(self, table: SettingsTable) -> None:
        self.table = table
        if self._on_change is not None:
            self._on_change(table)

    def _parse(self, payload: Any) -> SettingsTable:
        return parse_settings(payload, self._fallback)

    async def _fetch(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return await get_json(self._session, self._settings.settings_url)

    @property
    def polls(self) -> bool:
        """Whether a settings API is configured (without one, there is nothing to run)."""
        return bool(self._settings.settings_url)

    async def run(self) -> None:
        """Polls until cancelled; returns at once when no settings API is configured."""
        if not self.polls:
            return
        try:
            await self.poller.run()
        finally:
            if self._session is not None:
                await self._session.close()
