"""One election candidate as its own process (so a test can kill -9 it).

``python candidate.py ETCD_URL SERVICE TTL`` prints a JSON line per leadership change:
``{"leader": bool, "epoch": int, "at": unix_time}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from marketpipe.ha.election import EtcdElection
from marketpipe.ha.term import Term
from marketpipe.logs import configure_logging
from marketpipe.supervision import Supervisor


def report(term: Term) -> None:
    print(
        json.dumps({"leader": not term.ended, "epoch": term.epoch, "at": time.time()}), flush=True
    )


async def main(url: str, service: str, ttl: int) -> None:
    election = EtcdElection([url], service, ttl, report)
    await election.start(Supervisor("candidate"))
    await asyncio.Event().wait()


if __name__ == "__main__":
    configure_logging("WARNING")
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
