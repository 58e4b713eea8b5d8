"""Probe and metrics routes over real HTTP."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from marketpipe.ops.http import ProbeServer, add_probe_routes


async def test_probes_follow_the_ready_check_and_serve_metrics() -> None:
    state = {"ready": False}
    server = ProbeServer(0, lambda: state["ready"], host="127.0.0.1")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/livez", "/live"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200
            for path in ("/readyz", "/read"):
                async with http.get(base + path) as resp:
                    assert resp.status == 503
            state["ready"] = True
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 200
            async with http.get(base + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            assert "marketpipe_is_leader" in text
            assert "marketpipe_published_messages_total" in text
    finally:
        await server.stop()


async def test_a_failing_ready_check_reads_as_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    async def mine(_request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app = web.Application()
    app.router.add_get("/ws", mine)
    add_probe_routes(app, broken)
    # the gateway's way: its own application, probes mounted beside its routes
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"http://127.0.0.1:{port}/ws") as resp:
                assert await resp.text() == "mine"
    finally:
        await runner.cleanup()
