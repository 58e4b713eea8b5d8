"""A tiny service run through ``run_service``, for the runtime tests.

``python dummy_service.py PORT NAME``: while leader, publishes ``dummy.tick`` every 10 ms
(``{"id", "n", "epoch"}``) and caches the last tick; on stop it publishes ``dummy.bye``, which
must get through the NATS drain that follows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import orjson

from marketpipe.config import load_settings
from marketpipe.logs import configure_logging
from marketpipe.services.runtime import ServiceContext, run_service


class Dummy:
    def __init__(self, ctx: ServiceContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.count = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.count += 1
            tick = {"id": self.name, "n": self.count, "epoch": self.ctx.epoch}
            payload = orjson.dumps(tick)
            if self.ctx.publish("dummy.tick", payload):
                self.ctx.cache_value("dummy:last", payload)
            await asyncio.sleep(0.01)  # the service's pace: a tick every 10 ms

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.ctx.publish("dummy.bye", self.name.encode())

    def ready(self) -> bool:
        return self.task is not None


def main() -> int:
    port, name = int(sys.argv[1]), sys.argv[2]
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return run_service(
        "dummy", argparse.Namespace(port=port), settings, lambda ctx: Dummy(ctx, name)
    )


if __name__ == "__main__":
    raise SystemExit(main())
