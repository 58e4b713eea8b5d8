"""Who may open a WebSocket: tokens, origins, connection places (issue 12, scenario 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.config import ConfigError, load_settings
from marketpipe.gateway.admission import (
    SUBPROTOCOL,
    Admission,
    Refusal,
    presented_token,
    subprotocol_for,
    token_valid,
)
from tests.eventually import eventually
from tests.gateway.client import metric_value, metrics, request
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(60)


@given(st.text(min_size=1, max_size=80))
def test_a_token_survives_the_subprotocol_encoding(token: str) -> None:
    offered = f"{SUBPROTOCOL}, {subprotocol_for(token)}"
    assert presented_token(None, offered) == token
    # an HTTP token (RFC 7230): what a Sec-WebSocket-Protocol value may hold
    assert all(c.isalnum() or c in "-._" for c in subprotocol_for(token))


def test_the_bearer_header_wins_and_garbage_is_no_token() -> None:
    assert presented_token("Bearer abc", subprotocol_for("xyz")) == "abc"
    assert presented_token("Basic abc", None) is None
    assert presented_token(None, "marketpipe.bearer.%%%") is None
    assert presented_token(None, SUBPROTOCOL) is None


def test_an_empty_token_admits_no_one() -> None:
    assert not token_valid("", [""])
    assert not token_valid(None, [""])
    assert not token_valid("", ["good", ""])
    assert token_valid("good", ["", "good"])
    door = Admission(10, [""], [])
    door.serving = True
    assert door.admit("Bearer ", None, None) is Refusal.BAD_TOKEN
    assert door.admit(None, None, None) is Refusal.BAD_TOKEN


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("gw.yaml", 'gateway_auth_tokens: ["good", ""]\n'),
        ("gw.yaml", "gateway_auth_tokens: ['  ']\n"),
        ("gw.toml", 'gateway_auth_tokens = ["", "good"]\n'),
    ],
)
def test_settings_refuse_an_empty_token(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match="GATEWAY_AUTH_TOKENS"):
        load_settings(path, environ={})


def test_missing_origin_needs_a_token_when_an_allow_list_is_set() -> None:
    door = Admission(10, [], ["https://good.example"])
    door.serving = True
    assert door.admit(None, None, None) is Refusal.NO_ORIGIN
    assert door.admit(None, None, "https://evil.example") is Refusal.BAD_ORIGIN
    assert door.admit(None, None, "https://good.example") is None
    door = Admission(10, ["t"], ["https://good.example"])
    door.serving = True
    assert door.admit("Bearer t", None, None) is None  # a non-browser client, by token
    assert door.admit("Bearer t", None, "https://evil.example") is Refusal.BAD_ORIGIN


def test_places_are_taken_at_admission_and_given_back() -> None:
    door = Admission(2, [], [])
    door.serving = True
    assert [door.admit(None, None, None) for _ in range(3)] == [None, None, Refusal.FULL]
    door.places.give_back()
    assert door.admit(None, None, None) is None


async def test_tokens_and_origins_on_the_wire(start_gateway: GatewayFactory) -> None:
    secured = start_gateway(
        gateway_auth_tokens="s3cret,other", gateway_allowed_origins="https://good.example"
    )
    good_origin = {"Origin": "https://good.example"}
    async with aiohttp.ClientSession() as http:
        for headers, url in [
            (good_origin, secured.ws_url),
            ({"Authorization": "Bearer wrong"} | good_origin, secured.ws_url),
            # a token in the URL ends up in access logs: not accepted, even a good one
            (good_origin, secured.ws_url + "?token=s3cret"),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                secured.ws_url,
                headers={"Authorization": "Bearer s3cret", "Origin": "https://evil.example"},
            )
        assert refused.value.status == 403
        admitted = [
            # a browser: the token as a subprotocol, answered with "marketpipe" alone
            dict(protocols=(SUBPROTOCOL, subprotocol_for("other")), headers=good_origin),
            # a program: no Origin, the bearer header
            dict(headers={"Authorization": "Bearer s3cret"}),
        ]
        for options in admitted:
            async with http.ws_connect(secured.ws_url, **options) as ws:  # type: ignore[arg-type]
                assert ws.protocol == (SUBPROTOCOL if "protocols" in options else None)
                assert (await request(ws, "subscribe", "trades@BTCUSDT"))["result"] == "subscribed"


async def test_without_tokens_a_request_without_origin_is_refused_by_the_allow_list(
    start_gateway: GatewayFactory,
) -> None:
    listed = start_gateway(gateway_allowed_origins="https://good.example")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(listed.ws_url)
        assert refused.value.status == 403
        async with http.ws_connect(listed.ws_url, origin="https://good.example") as ws:
            assert (await request(ws, "subscribe", "trades@BTCUSDT"))["result"] == "subscribed"
        text = await metrics(http, listed.http_url)
    assert metric_value(text, 'marketpipe_bad_input_total{kind="no_origin",source="gateway"}') == 1


async def test_concurrent_upgrades_never_pass_the_connection_limit(
    start_gateway: GatewayFactory,
) -> None:
    limit, tries = 3, 40
    small = start_gateway(gateway_max_connections=str(limit))
    async with aiohttp.ClientSession() as http:

        async def none_open() -> bool:
            text = await metrics(http, small.http_url)
            return metric_value(text, "marketpipe_gateway_connections") == 0

        for _ in range(3):
            results = await asyncio.gather(
                *(http.ws_connect(small.ws_url) for _ in range(tries)), return_exceptions=True
            )
            open_ = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
            refused = [r for r in results if isinstance(r, aiohttp.WSServerHandshakeError)]
            assert len(open_) == limit and len(refused) == tries - limit, results
            assert all(r.status == 503 for r in refused)
            await asyncio.gather(*(ws.close() for ws in open_))
            await eventually(none_open)  # places come back once the gateway has seen the closes
