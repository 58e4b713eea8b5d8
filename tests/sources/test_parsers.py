from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketpipe.config import Settings
from marketpipe.exchange.rest import ExchangeInfo, SymbolInfo
from marketpipe.sources.assets import Universe, parse_assets, universe_from_exchange
from marketpipe.sources.polling import PayloadRejected
from marketpipe.sources.settings import SymbolSettings, parse_settings

FALLBACK = SymbolSettings(35.0, 250)


def test_assets_new_shape_normalises_and_puts_priority_first() -> None:
    universe = parse_assets(
        {"priority": ["BTC-USDT", "eth/usdt"], "others": ["SOL-USDT", "BTC-USDT", "SOL-USDT"]}
    )
    assert universe == Universe(("BTCUSDT", "ETHUSDT"), ("SOLUSDT",))
    assert universe.is_priority("ETHUSDT") and not universe.is_priority("SOLUSDT")


def test_assets_old_shape_is_all_others() -> None:
    universe = parse_assets({"result": [{"name": "BTC-USDT"}, {"name": "XRP-USDT", "id": 3}]})
    assert universe == Universe((), ("BTCUSDT", "XRPUSDT"))


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "BTCUSDT",
        {},
        {"priority": "BTC-USDT"},
        {"priority": ["BTC-USDT", 7]},
        {"result": [{"name": None}]},
        {"result": ["BTC-USDT"]},
        {"others": ["BTC USDT!"]},
        {"priority": [], "others": []},
    ],
)
def test_garbage_assets_are_rejected_whole(payload: Any) -> None:
    with pytest.raises(PayloadRejected):
        parse_assets(payload)


@given(st.lists(st.sampled_from(["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"]), min_size=1))
def test_assets_never_list_a_pair_twice(names: list[str]) -> None:
    half = len(names) // 2
    universe = parse_assets({"priority": names[:half], "others": names[half:]})
    assert len(set(universe.symbols)) == len(universe.symbols)


def test_universe_without_assets_api_comes_from_exchange_info() -> None:
    info = ExchangeInfo(
        symbols=[
            SymbolInfo("BTCUSDT", "TRADING", "BTC", "USDT"),
            SymbolInfo("ETHBTC", "TRADING", "ETH", "BTC"),
            SymbolInfo("LUNAUSDT", "BREAK", "LUNA", "USDT"),
            SymbolInfo("ADAUSDT", "TRADING", "ADA", "USDT"),
            SymbolInfo("ETHUSDT", "TRADING", "ETH", "USDT"),
        ]
    )
    settings = Settings(priority_symbols=["ETHUSDT", "NOPEUSDT"], quote_assets=["USDT"])
    assert universe_from_exchange(info, settings) == Universe(("ETHUSDT",), ("ADAUSDT", "BTCUSDT"))
    capped = settings.model_copy(update={"max_symbols": 2})
    assert universe_from_exchange(info, capped).symbols == ("ETHUSDT", "ADAUSDT")


def test_settings_symbol_keys_override_default() -> None:
    table = parse_settings(
        {"DEFAULT": {"MaxSpreadPct": 20, "Depth": 100}, "btc-usdt": {"MaxSpreadPct": 5}}, FALLBACK
    )
    assert table.settings_for("BTCUSDT") == SymbolSettings(5.0, 100)
    assert table.settings_for("ETHUSDT") == SymbolSettings(20.0, 100)
    assert parse_settings({}, FALLBACK).settings_for("X") == FALLBACK


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"DEFAULT": {"MaxSpreadPct": 0}},
        {"DEFAULT": {"MaxSpreadPct": 100.5}},
        {"DEFAULT": {"MaxSpreadPct": "5"}},
        {"DEFAULT": {"Depth": 0}},
        {"DEFAULT": {"Depth": 5001}},
        {"DEFAULT": {"Depth": 2.5}},
        {"DEFAULT": {"Depth": True}},
        {"DEFAULT": {"Colour": "red"}},
        {"BTCUSDT": 5},
        {"BTCUSDT": {"MaxSpreadPct": 5}, "ETHUSDT": {"Depth": -1}},
    ],
)
def test_invalid_settings_are_rejected_whole(payload: Any) -> None:
    with pytest.raises(PayloadRejected):
        parse_settings(payload, FALLBACK)


@given(spread=st.floats(0.001, 100), depth=st.integers(1, 5000))
def test_any_valid_values_are_taken(spread: float, depth: int) -> None:
    table = parse_settings({"ETHUSDT": {"MaxSpreadPct": spread, "Depth": depth}}, FALLBACK)
    assert table.settings_for("ETHUSDT") == SymbolSettings(spread, depth)
