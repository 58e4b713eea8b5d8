"""Every Prometheus metric marketpipe exports, defined once (names are a contract: DESIGN §6)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EXCHANGE_MESSAGES = Counter(
    "marketpipe_exchange_messages_total",
    "Frames received from the exchange",
    ["stream"],
)
PUBLISHED_MESSAGES = Counter(
    "marketpipe_published_messages_total",
    "Messages published to NATS",
    ["channel"],
)
BOOK_RESYNCS = Counter(
    "marketpipe_book_resyncs_total",
    "Order book resynchronisations, by reason",
    ["reason"],
)
BOOKS_SYNCED = Gauge("marketpipe_books_synced", "Order books currently in sync")
BOOKS_TRACKED = Gauge("marketpipe_books_tracked", "Order books this instance maintains")
PUBLISH_LATENCY = Histogram(
    "marketpipe_publish_latency_seconds",
    "Exchange event time to NATS publish",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
)
IS_LEADER = Gauge("marketpipe_is_leader", "1 while this instance holds the leader lease")
LEADER_EPOCH = Gauge("marketpipe_leader_epoch", "Epoch of the current leadership term")
REST_WEIGHT_USED = Gauge(
    "marketpipe_rest_weight_used", "Exchange REST weight used this minute (X-MBX-USED-WEIGHT-1M)"
)
REST_WEIGHT_SPENT = Counter(
    "marketpipe_rest_weight_spent_total",
    "Exchange REST weight this process spent (each request sent, retries too), by endpoint",
    ["endpoint"],
)
REST_REQUESTS = Counter(
    "marketpipe_rest_requests_total",
    "Exchange REST requests, by endpoint and status",
    ["endpoint", "status"],
)
BAD_INPUT = Counter(
    "marketpipe_bad_input_total",
    "Inputs rejected as malformed or impossible",
    ["source", "kind"],
)
STREAM_CONNECTIONS = Gauge("marketpipe_stream_connections", "Open exchange stream connections")
STREAM_RECONNECTS = Counter(
    "marketpipe_stream_reconnects_total", "Exchange stream reconnections, by reason", ["reason"]
)
REDIS_ERRORS = Counter("marketpipe_redis_errors_total", "Failed Redis writes or reads")
SETTINGS_REJECTED = Counter(
    "marketpipe_settings_rejected_total", "Settings or assets payloads rejected whole", ["source"]
)
BOOK_AUDIT_MATCH = Gauge(
    "marketpipe_book_audit_match_ratio",
    "Share of levels matching a fresh REST snapshot at the same update id",
    ["symbol"],
)
GATEWAY_CONNECTIONS = Gauge("marketpipe_gateway_connections", "Open gateway client connections")
GATEWAY_DROPPED = Counter(
    "marketpipe_gateway_dropped_messages_total",
    "Messages not delivered to a client (conflated away or client disconnected as slow)",
    ["reason"],
)
GATEWAY_DISCONNECTS = Counter(
    "marketpipe_gateway_disconnects_total", "Clients closed by the gateway, by reason", ["reason"]
)
GATEWAY_SUBSCRIPTIONS = Gauge(
    "marketpipe_gateway_subscriptions", "Topics with at least one subscribed client"
)

# Transport, cache and leadership (helper D).
PUBLISH_ERRORS = Counter(
    "marketpipe_publish_errors_total",
    "NATS publishes that failed (payload too large, connection lost), by channel and reason",
    ["channel", "reason"],
)
NATS_CONNECTED = Gauge("marketpipe_nats_connected", "1 while the NATS client is connected")
NATS_RECONNECTS = Counter("marketpipe_nats_reconnects_total", "NATS client reconnections")
REDIS_PENDING_KEYS = Gauge(
    "marketpipe_redis_pending_keys", "Cache keys written in memory but not yet flushed to Redis"
)
REDIS_FENCED = Counter(
    "marketpipe_redis_fenced_total",
    "Cache writes not made: their term ended before the flush, or Redis held a newer epoch",
    ["reason"],
)
REDIS_REFILLS = Counter(
    "marketpipe_redis_refills_total", "Full rewrites of Redis from the in-memory mirror"
)
TASK_RESTARTS = Counter(
    "marketpipe_task_restarts_total",
    "Supervised long-lived tasks restarted after they failed, by task",
    ["task"],
)
LEADER_TRANSITIONS = Counter(
    "marketpipe_leader_transitions_total",
    "Changes of this instance's leadership, by new role and reason",
    ["role", "reason"],
)

# Trades, tickers, markets (helper G).
TRADE_CONTINUITY = Counter(
    "marketpipe_trade_continuity_total",
    "Trade-id continuity: duplicate (dropped), gap / check (REST fetches), recovered (published "
    "after a fetch), skipped (ids no longer available), rejected (ids REST never confirmed)",
    ["event"],
)
MARKETS_PAIRS = Gauge("marketpipe_markets_pairs", "Pairs in the markets snapshot")

# Shards (DESIGN §9): what each instance of a sharded service leads and ingests.
BOOKS_LIVE = Gauge(
    "marketpipe_books_live",
    "Order books in sync on this instance, by shard and role (leader or standby)",
    ["shard", "role"],
)
SHARD_PAIRS = Gauge(
    "marketpipe_shard_pairs", "Pairs of each shard this instance ingests", ["shard"]
)
SHARDS_LEADING = Gauge("marketpipe_shards_leading", "Shards whose leader key this instance holds")
SHARDS_STANDBY = Gauge(
    "marketpipe_shards_standby",
    "Shards this instance ingests without leading them (standing by, or covering a hand-over)",
)
