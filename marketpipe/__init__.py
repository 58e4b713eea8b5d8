"""marketpipe: Binance Spot market data, exact local order books, distributed over NATS."""

__version__ = "0.1.0"
