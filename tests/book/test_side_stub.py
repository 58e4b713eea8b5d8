"""The hand-written stub of the compiled side (``side.pyi``) matches the built module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ALLOWLIST = Path(__file__).with_name("side_stubtest_allowlist.txt")


def test_stub_matches_the_compiled_module() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "marketpipe.book.side",
            "--allowlist",
            str(ALLOWLIST),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
