"""Builds the compiled part of the book (``marketpipe/book/side.pyx``); the rest is pyproject.

The build needs a C compiler and Python's C headers: without either it stops with a message
naming what to install, not a compiler's traceback.
"""

import os
import shutil
import sys
import sysconfig

from Cython.Build import cythonize
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

INSTALL = (
    "Install what is missing and retry: on Debian or Ubuntu `apt-get install gcc python3-dev`"
    " (python3.X-dev for a Python 3.X that is not the system's); on Fedora"
    " `dnf install gcc python3-devel`; on Alpine `apk add build-base python3-dev`; on macOS"
    " `xcode-select --install`."
)
NEEDS = (
    "marketpipe compiles its order book (marketpipe/book/side.pyx) when it is installed:"
    f" that needs a C compiler and the C headers of this Python ({sys.executable}, "
    f"{sys.version_info.major}.{sys.version_info.minor})."
)


def missing_headers() -> str | None:
    """What is missing of Python's C headers (None: they are there)."""
    include = sysconfig.get_path("include")
    if os.path.isfile(os.path.join(include, "Python.h")):
        return None
    return f"Python.h is not in {include}"


def missing_compiler(command: list[str]) -> str | None:
    """What is missing of the compiler the build would run (None: it is there)."""
    if not command or shutil.which(command[0]):
        return None
    return f"the C compiler {command[0]!r} is not found" + (
        " (from $CC)" if os.environ.get("CC") else ""
    )


class BuildExt(build_ext):
    """build_ext that checks for a compiler and headers first, and turns a failed compile into
    the same message."""

    def build_extensions(self) -> None:
        # a Unix compiler's command line; other platforms' compilers are found by distutils
        command = list(getattr(self.compiler, "compiler_so", None) or [])
        missing = [m for m in (missing_compiler(command), missing_headers()) if m]
        if missing:
            raise PlatformError(f"{NEEDS} Here {' and '.join(missing)}. {INSTALL}")
        try:
            super().build_extensions()
        except (CCompilerError, CompileError, ExecError) as exc:
            failed = str(exc).rstrip(".")
            raise PlatformError(f"{NEEDS} The compile failed: {failed}. {INSTALL}") from exc


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        ["marketpipe/book/side.pyx"], compiler_directives={"embedsignature": True}
    ),
)
