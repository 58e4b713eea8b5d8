"""The exchange simulator as a child process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketpipe.infra.local import Process, _http_ok, free_port


@dataclass
class SimulatorProcess:
    """``python -m marketpipe exchange-sim`` with ``symbols``, ``seed`` and any ``extra_args``."""

    symbols: int = 5
    seed: int = 1
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mp-sim-")))
    process: Process | None = None

    def start(self, timeout: float = 30.0) -> SimulatorProcess:
        argv = [
            sys.executable,
            "-m",
            "marketpipe",
            "exchange-sim",
            "--port",
            str(self.port),
            "--symbols",
            str(self.symbols),
            "--seed",
            str(self.seed),
            *self.extra_args,
        ]
        self.process = Process(
            name="exchange-sim",
            argv=argv,
            healthy=functools.partial(_http_ok, f"{self.url}/healthz"),
            log_path=self.workdir / "exchange-sim.log",
        )
        self.process.start(timeout=timeout)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        """A BINANCE_REST_URL base: the client adds ``/api/v3/...``."""
        return self.url

    @property
    def ws_url(self) -> str:
        """A BINANCE_WS_URL base: the client adds ``/ws`` or ``/stream?streams=...``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def assets_url(self) -> str:
        return f"{self.url}/assets"

    @property
    def settings_url(self) -> str:
        return f"{self.url}/settings"

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid

    def admin(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, **query: Any
    ) -> Any:
        """Call ``/admin/<path>`` (blocking) and return the decoded JSON answer."""
        url = f"{self.url}/admin/{path.lstrip('/')}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method.upper())
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def book(self, symbol: str) -> dict[str, Any]:
        return dict(self.admin("GET", "book", symbol=symbol))

    def fault(self, **fault: Any) -> Any:
        return self.admin("POST", "faults", fault)

    def clear_faults(self) -> Any:
        return self.admin("DELETE", "faults")

    def pause(self) -> Any:
        return self.admin("POST", "pause")

    def resume(self) -> Any:
        return self.admin("POST", "resume")

    def step(self, n: int = 1) -> Any:
        return self.admin("POST", "step", n=n)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
