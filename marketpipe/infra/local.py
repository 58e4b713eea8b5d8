"""Real servers as child processes on free loopback ports: a NATS cluster, Redis and etcd.

Used by the test fixtures, the benchmarks and ``marketpipe up``. Nothing here touches servers
already running on the standard ports: every port is asked of the kernel.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """A local server could not be started or did not become healthy."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, *fallbacks: str) -> str:
    """Prefer the binary installed beside this interpreter (a venv's bin/), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    for candidate in (name, *fallbacks):
        found = shutil.which(candidate)
        if found:
            return found
    raise ServerError(f"{name} not found; run scripts/bootstrap to install it")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServerError:
            raise  # e.g. the process exited: waiting longer cannot help
        except Exception:
            pass  # not answering yet
        time.sleep(0.05)
    raise ServerError(f"{what} not healthy after {timeout}s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)


def _tcp_ping(port: int, payload: bytes, expect: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(payload)
        return s.recv(64).startswith(expect)


@dataclass
class Process:
    """One child server process that can be killed, paused and restarted on the same ports."""

    name: str
    argv: list[str]
    healthy: Callable[[], bool]
    log_path: Path
    env: dict[str, str] | None = None  # extra environment on top of this process's
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        log.close()
        try:
            wait_until(self._alive_and_healthy, timeout, self.name)
        except ServerError:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServerError(f"{self.name} failed to start; log tail:\n{tail}") from None

    def _alive_and_healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError(f"{self.name} exited")
        return self.healthy()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)


@dataclass
class NatsCluster:
    """``size`` nats-server processes joined by cluster routes; max_payload raised for snapshots."""

    size: int = 3
    max_payload: int = 8 * 1024 * 1024
    # True: servers do not tell clients the other nodes' addresses, so a client given proxied
    # addresses stays behind its proxies (fault tests cut one process off the whole cluster)
    no_advertise: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mp-nats-")))
    nodes: list[Process] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)
    monitor_ports: list[int] = field(default_factory=list)

    def start(self) -> NatsCluster:
        binary = find_binary("nats-server")
        self.client_ports = [free_port() for _ in range(self.size)]
        self.monitor_ports = monitor_ports = [free_port() for _ in range(self.size)]
        route_ports = [free_port() for _ in range(self.size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
        for i in range(self.size):
            conf = self.workdir / f"n{i}.conf"
            conf.write_text(
                f"server_name: n{i}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{monitor_ports[i]}\n"
                f"max_payload: {self.max_payload}\n"
                "max_pending: 268435456\n"
                "cluster {\n  name: marketpipe\n"
                f"  no_advertise: {str(self.no_advertise).lower()}\n"
                f"  listen: 127.0.0.1:{route_ports[i]}\n"
                f"  routes: [{routes}]\n}}\n"
            )
            self.nodes.append(
                Process(
                    name=f"nats-n{i}",
                    argv=[binary, "-c", str(conf)],
                    healthy=functools.partial(
                        _http_ok, f"http://127.0.0.1:{monitor_ports[i]}/healthz"
                    ),
                    log_path=self.workdir / f"n{i}.log",
                )
            )
        for node in self.nodes:
            node.start()
        wait_until(self.routed, 20, "nats cluster routes")
        return self

    def routed(self) -> bool:
        """Every running node has a route to every other running node."""
        running = [
            m for m, node in zip(self.monitor_ports, self.nodes, strict=True) if node.running
        ]
        for m in running:
            with urllib.request.urlopen(f"http://127.0.0.1:{m}/routez", timeout=1) as r:
                if json.load(r).get("num_routes", 0) < len(running) - 1:
                    return False
        return True

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    binary: str | None = None  # default: redis-server from PATH
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mp-redis-")))
    process: Process | None = None

    def start(self) -> RedisServer:
        binary = self.binary or find_binary("redis-server", "/usr/bin/redis-server")
        self.process = Process(
            name="redis",
            argv=[
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            healthy=lambda: _tcp_ping(self.port, b"PING\r\n", b"+PONG"),
            log_path=self.workdir / "redis.log",
        )
        self.process.start()
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process:
            self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class EtcdServer:
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mp-etcd-")))
    process: Process | None = None

    def start(self) -> EtcdServer:
        binary = find_binary("etcd", "/usr/bin/etcd")
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = Process(
            name="etcd",
            argv=[
                binary,
                "--name",
                "mp",
                "--data-dir",
                str(self.workdir / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"mp={peer}",
                "--log-level",
                "warn",
            ],
            healthy=lambda: _http_ok(f"{client}/health"),
            log_path=self.workdir / "etcd.log",
        )
        self.process.start(timeout=30)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process:
            self.process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
