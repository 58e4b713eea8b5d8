"""Assets and settings clients polling the simulator's ``/assets``, ``/settings`` and
``exchangeInfo``, changed at runtime over its admin API (``PUT /admin/assets`` ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson

from marketpipe.config import Settings
from marketpipe.exchange.rest import ExchangeRest
from marketpipe.infra.simulator import SimulatorProcess
from marketpipe.sources.assets import AssetsSource, Universe
from marketpipe.sources.settings import SettingsSource, SymbolSettings
from tests.eventually import eventually
from tests.exchange.support import admin
from tests.metrics import sample

POLL = 0.05


def rejected(source: str) -> float:
    return sample("marketpipe_settings_rejected_total", source=source)


async def serve(sim: SimulatorProcess, path: str, payload: Any, status: int = 200) -> None:
    """Make the simulator serve ``payload`` (JSON, or raw bytes) at ``/assets`` or ``/settings``."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await asyncio.to_thread(sim.admin, "PUT", path, None, body, status=status)


async def rejected_once_more(source: str, action: Awaitable[None]) -> None:
    before = rejected(source)
    await action
    await eventually(lambda: rejected(source) > before)


@asynccontextmanager
async def polling(run: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_assets_changes_are_picked_up_and_garbage_rejected(
    exchange_sim: SimulatorProcess,
) -> None:
    settings = Settings(assets_url=exchange_sim.assets_url, assets_poll_seconds=POLL)
    seen: list[Universe] = []

    async def seen_count(n: int) -> None:
        await eventually(lambda: len(seen) == n)

    async with ExchangeRest(exchange_sim.rest_url) as rest:
        source = AssetsSource(settings, rest, seen.append)
        async with polling(source.run):
            await seen_count(1)  # the simulator derives its assets from its trading pairs
            halt = {"symbol": "XRPUSDT", "status": "HALT"}
            await admin(exchange_sim, "POST", "symbols/status", halt)
            await seen_count(2)
            await serve(
                exchange_sim, "assets", {"result": [{"name": "ETH-USDT"}, {"name": "SOL-USDT"}]}
            )
            await seen_count(3)
            await rejected_once_more("assets", serve(exchange_sim, "assets", b"<html>oops</html>"))
            await rejected_once_more("assets", serve(exchange_sim, "assets", {"priority": [17]}))
            await rejected_once_more("assets", serve(exchange_sim, "assets", {"others": []}))
            await serve(exchange_sim, "assets", b"upstream down", status=503)
            await asyncio.sleep(5 * POLL)  # not JSON either, but an outage: nothing changes
            await serve(exchange_sim, "assets", {"priority": ["SOL-USDT"], "others": ["BNB-USDT"]})
            await seen_count(4)
    assert seen == [
        Universe(("BTCUSDT", "ETHUSDT"), ("BNBUSDT", "SOLUSDT", "XRPUSDT")),
        Universe(("BTCUSDT", "ETHUSDT"), ("BNBUSDT", "SOLUSDT")),
        Universe((), ("ETHUSDT", "SOLUSDT")),
        Universe(("SOLUSDT",), ("BNBUSDT",)),
    ]
    assert source.universe == seen[-1]


async def test_without_assets_api_the_exchange_list_is_used(exchange_sim: SimulatorProcess) -> None:
    eth_btc = {"symbol": "ETHBTC", "base": "ETH", "quote": "BTC", "price": "0.05000000"}
    await admin(exchange_sim, "POST", "symbols", eth_btc)  # another quote asset: not ours
    await admin(exchange_sim, "POST", "symbols/status", {"symbol": "XRPUSDT", "status": "HALT"})
    settings = Settings(priority_symbols=["ETHUSDT"], assets_poll_seconds=POLL)
    seen: list[Universe] = []
    async with ExchangeRest(exchange_sim.rest_url) as rest:
        async with polling(AssetsSource(settings, rest, seen.append).run):
            await eventually(lambda: len(seen) == 1)
            await admin(exchange_sim, "POST", "symbols", {"symbol": "NEWUSDT"})  # a listing
            await eventually(lambda: len(seen) == 2)
            await admin(exchange_sim, "DELETE", "symbols", symbol="BNBUSDT")  # a delisting
            await eventually(lambda: len(seen) == 3)
        capped = Settings(priority_symbols=["ETHUSDT"], max_symbols=2)
        assert await AssetsSource(capped, rest, seen.append).poller.poll_once()
    assert seen == [
        Universe(("ETHUSDT",), ("BNBUSDT", "BTCUSDT", "SOLUSDT")),
        Universe(("ETHUSDT",), ("BNBUSDT", "BTCUSDT", "NEWUSDT", "SOLUSDT")),
        Universe(("ETHUSDT",), ("BTCUSDT", "NEWUSDT", "SOLUSDT")),
        Universe(("ETHUSDT",), ("BTCUSDT",)),
    ]


async def test_settings_changes_are_picked_up_and_bad_payloads_keep_the_last_good(
    exchange_sim: SimulatorProcess,
) -> None:
    settings = Settings(
        settings_url=exchange_sim.settings_url,
        settings_poll_seconds=POLL,
        default_max_spread_pct=20,
        default_depth=100,
    )
    source = SettingsSource(settings)
    assert source.settings_for("BTCUSDT") == SymbolSettings(20.0, 100)  # configured, until read
    good = SymbolSettings(5.0, 250)
    async with polling(source.run):
        # The simulator starts with {"DEFAULT": {35, 250}, "BTCUSDT": {"MaxSpreadPct": 5}}.
        await eventually(lambda: source.settings_for("BTCUSDT") == good)
        assert source.settings_for("ETHUSDT") == SymbolSettings(35.0, 250)
        for bad in (
            {"DEFAULT": {"MaxSpreadPct": 500}},
            {"DEFAULT": {"Depth": "deep"}},
            {"BTCUSDT": {"MaxSpreadPct": 5, "Colour": "red"}},
            [1, 2],
            b"{not json",
        ):
            await rejected_once_more("settings", serve(exchange_sim, "settings", bad))
            assert source.settings_for("BTCUSDT") == good
        await serve(exchange_sim, "settings", {"DEFAULT": {"Depth": 20}}, status=500)
        await asyncio.sleep(5 * POLL)  # an outage, whatever the body says: nothing changes
        assert source.settings_for("BTCUSDT") == good
        await serve(exchange_sim, "settings", {"DEFAULT": {"Depth": 20}})
        await eventually(lambda: source.settings_for("BTCUSDT") == SymbolSettings(20.0, 20))


async def test_without_settings_api_the_configured_defaults_apply() -> None:
    source = SettingsSource(Settings(default_max_spread_pct=10, default_depth=50))
    await source.run()  # returns at once
    assert source.settings_for("BTCUSDT") == SymbolSettings(10.0, 50)
