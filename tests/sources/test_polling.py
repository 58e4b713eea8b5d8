"""Assets and settings clients polling a real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from marketpipe.config import Settings
from marketpipe.exchange.rest import ExchangeRest
from marketpipe.ops.metrics import SETTINGS_REJECTED
from marketpipe.sources.assets import AssetsSource, Universe
from marketpipe.sources.settings import SettingsSource, SymbolSettings


class Api:
    def __init__(self) -> None:
        self.payloads: dict[str, Any] = {}
        self.url = ""

    async def serve(self, request: web.Request) -> web.Response:
        payload = self.payloads[request.path]
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(body=body, content_type="application/json")


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    api = Api()
    app = web.Application()
    app.router.add_get("/{tail:.*}", api.serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield api
    await runner.cleanup()


def rejected(source: str) -> float:
    return SETTINGS_REJECTED.labels(source=source)._value.get()


async def test_assets_changes_are_picked_up_and_garbage_rejected(api: Api) -> None:
    api.payloads["/assets"] = {"priority": ["BTC-USDT"], "others": ["ETH-USDT"]}
    settings = Settings(assets_url=f"{api.url}/assets", assets_poll_seconds=0.05)
    seen: list[Universe] = []
    async with ExchangeRest(api.url) as rest:
        source = AssetsSource(settings, rest, seen.append)
        task = asyncio.create_task(source.run())
        try:
            await asyncio.sleep(0.2)
            api.payloads["/assets"] = {"result": [{"name": "ETH-USDT"}, {"name": "SOL-USDT"}]}
            await asyncio.sleep(0.2)
            before = rejected("assets")
            api.payloads["/assets"] = b"<html>oops</html>"
            await asyncio.sleep(0.2)
            api.payloads["/assets"] = {"priority": [17]}
            await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert seen == [
        Universe(("BTCUSDT",), ("ETHUSDT",)),
        Universe((), ("ETHUSDT", "SOLUSDT")),
    ]
    assert source.universe == seen[-1]
    assert rejected("assets") >= before + 2


async def test_without_assets_api_the_exchange_list_is_used(api: Api) -> None:
    api.payloads["/api/v3/exchangeInfo"] = {
        "symbols": [
            {"symbol": s, "status": st, "baseAsset": s[:3], "quoteAsset": s[3:]}
            for s, st in [("BTCUSDT", "TRADING"), ("ETHUSDT", "TRADING"), ("XRPUSDT", "HALT")]
        ]
    }
    settings = Settings(priority_symbols=["ETHUSDT"])
    seen: list[Universe] = []
    async with ExchangeRest(api.url) as rest:
        assert await AssetsSource(settings, rest, seen.append).poller.poll_once()
    assert seen == [Universe(("ETHUSDT",), ("BTCUSDT",))]


async def test_settings_changes_are_picked_up_and_bad_payloads_keep_the_last_good(
    api: Api,
) -> None:
    api.payloads["/settings"] = {
        "DEFAULT": {"MaxSpreadPct": 35, "Depth": 250},
        "BTCUSDT": {"MaxSpreadPct": 5},
    }
    settings = Settings(settings_url=f"{api.url}/settings", settings_poll_seconds=0.05)
    source = SettingsSource(settings)
    assert source.settings_for("BTCUSDT") == SymbolSettings(35.0, 250)  # configured defaults
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(0.2)
        assert source.settings_for("BTCUSDT") == SymbolSettings(5.0, 250)
        assert source.settings_for("ETHUSDT") == SymbolSettings(35.0, 250)
        before = rejected("settings")
        api.payloads["/settings"] = {"DEFAULT": {"MaxSpreadPct": 500}}
        await asyncio.sleep(0.2)
        assert source.settings_for("BTCUSDT") == SymbolSettings(5.0, 250)
        assert rejected("settings") > before
        api.payloads["/settings"] = {"DEFAULT": {"Depth": 20}}
        await asyncio.sleep(0.2)
        assert source.settings_for("BTCUSDT") == SymbolSettings(35.0, 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_settings_api_the_configured_defaults_apply() -> None:
    source = SettingsSource(Settings(default_max_spread_pct=10, default_depth=50))
    await source.run()  # returns at once
    assert source.settings_for("BTCUSDT") == SymbolSettings(10.0, 50)
