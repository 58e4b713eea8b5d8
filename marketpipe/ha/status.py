"""``marketpipe status [--json]``: the live instances of every service, their roles, and each
shard's leader, standbys and pair count, as registered in etcd (DESIGN §9).

The reading is pure (:func:`cluster_status` takes the keys and values under ``/marketpipe/``);
the command only fetches them (``ETCD_ENDPOINTS``) and prints::

    {"orderbook": {"instances": [{"id", "host", "port", "version", "started", "leading",
                                  "standby", ...}, ...],
                   "shards": {"0": {"leader": "host:8081:41", "standby": ["..."], "pairs": 37},
                              ...}}, ...}
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from etcd3aio import Etcd3Client
from etcd3aio.kv import prefix_range_end

from marketpipe.config import Settings
from marketpipe.ha.election import ETCD_ERRORS, host_port

ROOT = "/marketpipe/"


def cluster_status(items: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    """Keys and values under ``/marketpipe/`` -> the status of every service found there."""
    instances: dict[str, dict[str, dict[str, Any]]] = {}
    leaders: dict[str, dict[int, str]] = {}
    for key, value in items:
        service, _, rest = key.removeprefix(ROOT).partition("/")
        if not service:
            continue
        if rest.startswith("instances/"):
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                instances.setdefault(service, {})[rest.removeprefix("instances/")] = record
        elif rest == "leader":
            leaders.setdefault(service, {})[0] = value.decode(errors="replace")
        else:
            parts = rest.split("/")
            if len(parts) == 3 and parts[::2] == ["shards", "leader"] and parts[1].isdigit():
                leaders.setdefault(service, {})[int(parts[1])] = value.decode(errors="replace")
    status: dict[str, Any] = {}
    for service in sorted(instances.keys() | leaders.keys()):
        records = instances.get(service, {})
        held = leaders.get(service, {})
        shards = held.keys() | {
            int(k) for r in records.values() for k in (*r.get("leading", ()), *r.get("standby", ()))
        }
        status[service] = {
            "instances": [records[i] for i in sorted(records)],
            "shards": {
                str(k): {
                    "leader": held.get(k),
                    "standby": sorted(i for i, r in records.items() if k in r.get("standby", ())),
                    "pairs": _pairs(k, held.get(k), records),
                    "epoch": records.get(held.get(k) or "", {}).get("epochs", {}).get(str(k)),
                }
                for k in sorted(shards)
            },
        }
    return status


def _pairs(shard: int, leader: str | None, records: dict[str, dict[str, Any]]) -> int:
    """The shard's pair count as its leader (else any instance ingesting it) reports it."""
    ordered = [records[leader]] if leader in records else []
    for record in (*ordered, *records.values()):
        pairs = record.get("pairs", {})
        if isinstance(pairs, dict) and str(shard) in pairs:
            return int(pairs[str(shard)])
    return 0


async def read_status(endpoints: list[str]) -> dict[str, Any]:
    client = Etcd3Client([host_port(e) for e in endpoints], rpc_max_attempts=2)
    await client.connect()
    try:
        assert client.kv is not None
        response = await client.kv.get(ROOT, range_end=prefix_range_end(ROOT), timeout=5.0)
    finally:
        await client.close()
    return cluster_status((kv.key.decode(errors="replace"), kv.value) for kv in response.kvs)


def render(status: dict[str, Any]) -> str:
    """The status as a few readable lines per service."""
    lines = []
    for service, state in status.items():
        lines.append(f"{service}: {len(state['instances'])} instance(s)")
        for record in state["instances"]:
            lines.append(
                f"  {record.get('id')}  leads {record.get('leading', [])}"
                f"  stands by for {record.get('standby', [])}  ({record.get('version', '?')})"
            )
        for shard, roles in state["shards"].items():
            lines.append(
                f"  shard {shard}: leader {roles['leader'] or '-'}, "
                f"standby {', '.join(roles['standby']) or '-'}, {roles['pairs']} pairs"
            )
    return "\n".join(lines) if lines else "no marketpipe instance registered"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the live instances of every service (from ETCD_ENDPOINTS), which shards each "
        "leads and stands by for, and each shard's pair count."
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.etcd_endpoints:
        print("marketpipe status: ETCD_ENDPOINTS is empty (no election, nothing registered)")
        return 2
    try:
        status = asyncio.run(read_status(settings.etcd_endpoints))
    except ETCD_ERRORS as exc:
        print(f"marketpipe status: etcd did not answer: {exc!r}", file=sys.stderr)
        return 1
    print(
        orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() if args.json else render(status)
    )
    return 0
