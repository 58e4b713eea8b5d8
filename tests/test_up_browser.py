"""``marketpipe up`` as a user runs it, and its page in headless Chromium.

One stack (3 NATS nodes, Redis, the simulator, the four services, the gateway) serves every test
here: the page must fill its markets table, show a book ladder that moves, and recent trades; the
supervisor must restart a child that dies; Ctrl-C must stop everything and exit 0.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from marketpipe.infra.local import free_port
from tests.eventually import eventually_sync

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SYMBOLS = 12
STARTUP_SECONDS = 60

pytestmark = pytest.mark.browser


@dataclass
class Stack:
    """A running ``marketpipe up`` and the lines it printed."""

    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    printed: list[str] = field(default_factory=list)

    def children(self) -> dict[int, str]:
        """pid -> command line of each running direct child."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = _state_and_parent(stat)
                if ppid == self.proc.pid and state != "Z":
                    found[int(stat.parent.name)] = (
                        (stat.parent / "cmdline").read_text().replace("\0", " ")
                    )
            except OSError:
                continue  # it exited while we looked
        return found

    def read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def kill_child(self, command: str) -> int:
        """SIGKILL the child running ``marketpipe <command>``; its pid."""
        pid = next(pid for pid, argv in self.children().items() if f" {command} " in argv)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_printed(self, text: str, timeout: float) -> str:
        """The first line printed from now on that holds ``text``."""

        def printed() -> str | None:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"marketpipe up exited: {self.printed}"
                return None
            self.printed.append(line)
            return line if text in line else None

        return eventually_sync(
            printed, timeout, lambda: f"{text!r} printed; so far: {self.printed}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


def _state_and_parent(stat: Path) -> tuple[str, int]:
    """From /proc/<pid>/stat (the command in parentheses may itself hold spaces)."""
    state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def _alive(pid: int) -> bool:
    """Running (not merely a zombie waiting for its parent)."""
    try:
        return _state_and_parent(Path(f"/proc/{pid}/stat"))[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketpipe", "up", "--port", str(port), "--symbols", str(SYMBOLS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C in the test's terminal is ours to send, not the shell's
    )
    running = Stack(proc=proc, url=f"http://127.0.0.1:{port}/")
    threading.Thread(target=running.read_output, daemon=True).start()
    try:
        banner = running.wait_printed("is up", STARTUP_SECONDS)
        assert running.url in banner
        yield running
    finally:
        running.stop()


def test_page_shows_markets_book_and_trades(stack: Stack, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (scripts/bootstrap installs Debian chromium)")

    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", console)
            page.goto(stack.url)
            status = page.locator("#status")
            expect(status).to_have_text("live", timeout=10_000)

            # the markets table fills with every pair, then its figures move
            rows = page.locator("#markets tbody tr")
            expect(rows).to_have_count(SYMBOLS, timeout=20_000)
            _wait_changed(page, "#markets tbody", 20)

            # choose a pair other than the one the page picked itself
            symbol = rows.nth(1).locator("td").first.inner_text()
            chosen_row = rows.filter(
                has=page.locator("td:first-child", has_text=re.compile(f"^{symbol}$"))
            )
            # the event goes to that row itself: a click at its coordinates could land on
            # another pair when the table re-sorts by volume in between
            chosen_row.dispatch_event("click")
            expect(page.locator("#pair-title")).to_have_text(symbol)
            expect(chosen_row).to_have_class("chosen")

            # its ladder: asks above bids, both from the highest price down, and it moves
            expect(page.locator("#asks tr").first).to_be_visible(timeout=30_000)
            expect(page.locator("#bids tr").first).to_be_visible()
            asks = [float(p) for p in page.locator("#asks tr td:first-child").all_inner_texts()]
            bids = [float(p) for p in page.locator("#bids tr td:first-child").all_inner_texts()]
            assert asks == sorted(asks, reverse=True) and bids == sorted(bids, reverse=True)
            assert min(asks) > max(bids), (asks, bids)
            _wait_changed(page, "#ladder", 20)

            # recent trades of that pair arrive
            expect(page.locator("#trades tbody tr").first).to_be_visible(timeout=20_000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert not problems, problems

            # the gateway dies: the page says so, the supervisor restarts it, the page resumes
            stack.kill_child("gateway")
            expect(status).to_contain_text("disconnected", timeout=5_000)
            expect(status).to_have_text("live", timeout=20_000)
            _wait_changed(page, "#ladder", 20)
        finally:
            browser.close()
    refused = "ERR_CONNECTION_REFUSED"  # the page retrying while the gateway was down
    assert not [p for p in problems if refused not in p], problems


def _wait_changed(page: Page, selector: str, seconds: float) -> None:
    """Wait until the text under ``selector`` differs from what it is now."""
    page.wait_for_function(
        "([sel, before]) => document.querySelector(sel).innerText !== before",
        arg=[selector, page.inner_text(selector)],
        timeout=seconds * 1000,
    )


def test_a_child_that_dies_is_restarted(stack: Stack) -> None:
    before = stack.children()
    victim = stack.kill_child("trades")

    def restarted() -> bool:
        now = stack.children()
        return (
            victim not in now
            and len(now) == len(before)
            and any(" trades " in a for a in now.values())
        )

    eventually_sync(
        restarted, 30, lambda: f"trades restarted: {stack.children()} / {stack.printed}"
    )


def test_ctrl_c_stops_everything(stack: Stack) -> None:
    children = stack.children()
    programs = sorted(
        argv.split()[3] if " -m marketpipe " in argv else Path(argv.split()[0]).name
        for argv in children.values()
    )
    assert programs == sorted(
        ["nats-server"] * 3
        + ["redis-server", "exchange-sim", "orderbook", "trades", "tickers", "markets", "gateway"]
    ), children
    started = time.monotonic()
    assert stack.stop() == 0
    assert time.monotonic() - started < 30
    eventually_sync(  # the kernel is done with each child that exited
        lambda: not [pid for pid in children if _alive(pid)], 2, "no orphan left running"
    )
