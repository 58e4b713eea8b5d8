"""Reading ``marketpipe status`` out of etcd's keys (pure)."""

from __future__ import annotations

import orjson

from marketpipe.ha.status import cluster_status, render


def _record(ident: str, leading: list[int], standby: list[int], pairs: dict[str, int]) -> bytes:
    return orjson.dumps(
        {
            "id": ident,
            "host": "h",
            "port": 1,
            "version": "0.1.0",
            "started": 1,
            "leading": leading,
            "epochs": {str(k): 100 + k for k in leading},
            "standby": standby,
            "pairs": pairs,
        }
    )


def test_services_instances_and_shards() -> None:
    items = [
        ("/marketpipe/orderbook/instances/a", _record("a", [0], [1], {"0": 5, "1": 7})),
        ("/marketpipe/orderbook/instances/b", _record("b", [1], [0], {"0": 5, "1": 7})),
        ("/marketpipe/orderbook/shards/0/leader", b"a"),
        ("/marketpipe/orderbook/shards/1/leader", b"b"),
        ("/marketpipe/markets/leader", b"m"),
        ("/marketpipe/orderbook/instances/junk", b"not json"),
    ]
    status = cluster_status(items)
    book = status["orderbook"]
    assert [r["id"] for r in book["instances"]] == ["a", "b"]
    assert book["shards"] == {
        "0": {"leader": "a", "standby": ["b"], "pairs": 5, "epoch": 100},
        "1": {"leader": "b", "standby": ["a"], "pairs": 7, "epoch": 101},
    }
    assert status["markets"]["shards"]["0"]["leader"] == "m"
    text = render(status)
    assert "shard 1: leader b, standby a, 7 pairs" in text


def test_nothing_registered() -> None:
    assert cluster_status([]) == {}
    assert render({}) == "no marketpipe instance registered"
