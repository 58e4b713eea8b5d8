"""Installing without a C compiler or without Python's C headers stops with a message naming what
to install (setup.py's build_ext, run into a temporary directory), not a compiler's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# setup.py run as pip runs it, with Python's include directory pointing nowhere: headers missing
WITHOUT_HEADERS = """
import runpy, sys, sysconfig
path = sysconfig.get_path
sysconfig.get_path = lambda name, *args, **kwargs: (
    "/nonexistent/include" if name == "include" else path(name, *args, **kwargs)
)
sys.argv[0] = "setup.py"
runpy.run_path("setup.py", run_name="__main__")
"""


def build_ext(tmp_path: Path, env: dict[str, str], code: str | None = None) -> str:
    """setup.py build_ext's output (it must fail)."""
    entry = ["-c", code] if code else ["setup.py"]
    into = ["--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "temp")]
    run = subprocess.run(
        [sys.executable, *entry, "build_ext", *into],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode != 0, run.stdout + run.stderr
    assert not list(tmp_path.rglob("*.so")), "built anyway"
    assert "Traceback" not in run.stderr, run.stderr
    assert "apt-get install gcc python3-dev" in run.stderr, run.stderr
    return run.stderr


def environment(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CC", "CFLAGS", "LDSHARED"}}
    return {**env, **changes}


def test_a_missing_compiler_named(tmp_path: Path) -> None:
    said = build_ext(tmp_path, environment(CC="/nonexistent/cc"))
    assert "the C compiler '/nonexistent/cc' is not found (from $CC)" in said


def test_no_compiler_on_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    said = build_ext(tmp_path, environment(PATH=str(empty)))
    compiler = sysconfig.get_config_var("CC").split()[0]  # the one this Python was built with
    assert f"the C compiler {compiler!r} is not found" in said


def test_missing_headers_named(tmp_path: Path) -> None:
    said = build_ext(tmp_path, environment(), WITHOUT_HEADERS)
    assert "Python.h is not in /nonexistent/include" in said


def test_a_failing_compile_explained(tmp_path: Path) -> None:
    said = build_ext(tmp_path, environment(CC="false"))
    assert "The compile failed" in said
