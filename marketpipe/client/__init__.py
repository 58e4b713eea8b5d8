"""marketpipe's Python client: checked local books from snapshot + deltas, trades, tickers and
market summaries, over the gateway (:class:`GatewayClient`) or NATS (:class:`NatsMarketClient`).
See docs/client.md."""

from marketpipe.client.book import Book
from marketpipe.client.gateway import GatewayClient
from marketpipe.client.nats import NatsMarketClient
from marketpipe.client.streams import ClientStats

__all__ = ["Book", "ClientStats", "GatewayClient", "NatsMarketClient"]
