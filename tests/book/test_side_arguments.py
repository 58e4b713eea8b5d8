"""The compiled side refuses bad arguments with a Python exception that says what is wrong.

``side.pyx`` runs with bounds checks off, and some of these arguments used to crash the
interpreter (a use-after-free, reads past an array): each case runs in its own process, so a
crash is this case failing, not the test run dying, and with Python's debug allocator, which
fills freed memory and checks the ends of blocks, so that memory misused shows as a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Each case's code runs after this; ``loaded()`` is a side holding two levels from a snapshot.
PRELUDE = """
from marketpipe.book.side import BookSide, PublishedView, ViewSide, render_view_message

def loaded(is_ask=False, limit=1000, horizon=5000):
    side = BookSide(is_ask)
    levels = [("11", "1"), ("12", "1")] if is_ask else [("10", "1"), ("9", "1")]
    side.load(levels, [(float(p), float(q)) for p, q in levels], limit, horizon)
    return side

def view():
    head = b'{"lastUpdateId":1,"E":2,"bids":['
    return render_view_message(head, loaded(), 2, loaded(is_ask=True), 2)
"""

NEW_BID = '[("11", "1")], [(11.0, 1.0)]'

# name: (code, the exception it raises, a fragment of its message)
CASES: dict[str, tuple[str, type[Exception], str]] = {
    # load: the limit asked for and the diffs' horizon
    "limit zero": (f"loaded(limit=0).apply({NEW_BID})", ValueError, "limit"),
    "limit negative": (f"loaded(limit=-5).apply({NEW_BID})", ValueError, "limit"),
    "limit not an int": ("loaded(limit='10')", TypeError, "limit"),
    "limit a float": ("loaded(limit=2.5)", TypeError, "limit"),
    "horizon one": (f"loaded(horizon=1).apply({NEW_BID})", ValueError, "horizon"),
    "horizon negative": ("loaded(horizon=-1)", ValueError, "horizon"),
    # load: levels and their numbers
    "load numbers of other length": (
        "BookSide(False).load([('10', '1')], [], 10, 5000)",
        ValueError,
        "",
    ),
    "load level too short": (
        "BookSide(False).load([('10',)], [(10.0, 1.0)], 10, 5000)",
        ValueError,
        "",
    ),
    "load price not a string": (
        "BookSide(False).load([(10, '1')], [(10.0, 1.0)], 10, 5000)",
        TypeError,
        "str",
    ),
    "load price nan": (
        "BookSide(False).load([('10', '1')], [(float('nan'), 1.0)], 10, 5000)",
        ValueError,
        "price",
    ),
    "load price negative": (
        "BookSide(False).load([('10', '1')], [(-10.0, 1.0)], 10, 5000)",
        ValueError,
        "price",
    ),
    "load quantity nan": (
        "BookSide(False).load([('10', '1')], [(10.0, float('nan'))], 10, 5000)",
        ValueError,
        "quantity",
    ),
    # apply
    "apply before load": (f"BookSide(False).apply({NEW_BID})", ValueError, "load"),
    "apply numbers of other length": ("loaded().apply([('11', '1')], [])", ValueError, ""),
    "apply level too short": ("loaded().apply([('11',)], [(11.0, 1.0)])", ValueError, ""),
    "apply level empty": ("loaded().apply([()], [(11.0, 1.0)])", ValueError, ""),
    "apply numbers empty": ("loaded().apply([('11', '1')], [()])", ValueError, ""),
    "apply numbers None": ("loaded().apply([('11', '1')], [None])", TypeError, ""),
    "apply price not a string": ("loaded().apply([(11, '1')], [(11.0, 1.0)])", TypeError, "str"),
    "apply quantity not a string": (
        "loaded().apply([('11', None)], [(11.0, 1.0)])",
        TypeError,
        "str",
    ),
    "apply price nan": (
        "loaded().apply([('11', '1')], [(float('nan'), 1.0)])",
        ValueError,
        "price",
    ),
    "apply price zero": ("loaded().apply([('11', '1')], [(0.0, 1.0)])", ValueError, "price"),
    "apply price infinite": (
        "loaded().apply([('11', '1')], [(float('inf'), 1.0)])",
        ValueError,
        "price",
    ),
    "apply quantity negative": (
        "loaded().apply([('11', '1')], [(11.0, -1.0)])",
        ValueError,
        "quantity",
    ),
    "apply quantity nan": (
        "loaded().apply([('11', '1')], [(11.0, float('nan'))])",
        ValueError,
        "quantity",
    ),
    # reading
    "best_json negative": ("loaded().best_json(-1)", ValueError, "count"),
    "fragments negative": ("loaded().fragments(-1)", ValueError, "count"),
    "levels negative": ("loaded().levels(-1)", ValueError, "count"),
    "fragments not an int": ("loaded().fragments('2')", TypeError, ""),
    "levels_from nan": ("loaded().levels_from(float('nan'))", ValueError, "key"),
    "covers nan": ("loaded().covers('nan')", ValueError, "price"),
    "best_price empty": ("BookSide(False).best_price()", IndexError, "empty"),
    "chunk zero": ("BookSide(False, chunk=0)", ValueError, "chunk"),
    # views
    "render bids None": (
        "render_view_message(b'{', None, 1, loaded(is_ask=True), 1)",
        TypeError,
        "",
    ),
    "render asks None": ("render_view_message(b'{', loaded(), 1, None, 1)", TypeError, ""),
    "render head None": (
        "render_view_message(None, loaded(), 1, loaded(is_ask=True), 1)",
        TypeError,
        "",
    ),
    "render sides swapped": (
        "render_view_message(b'{', loaded(is_ask=True), 1, loaded(), 1)",
        ValueError,
        "bids",
    ),
    "render count negative": (
        "render_view_message(b'{', loaded(), -1, loaded(is_ask=True), 1)",
        ValueError,
        "count",
    ),
    "delta from None": ("view().delta_message(None, 1)", TypeError, ""),
    "delta from a bare view": (
        "view().delta_message(PublishedView(), 1)",
        TypeError,
        "render_view_message",
    ),
    "delta of a bare view": (
        "PublishedView().delta_message(view(), 1)",
        TypeError,
        "render_view_message",
    ),
    "delta update id negative": ("view().delta_message(view(), -1)", ValueError, "update"),
}

CATCH = """
try:
{code}
except Exception as exc:
    print(*(c.__name__ for c in type(exc).__mro__), ":", exc)
else:
    print("no error")
"""


def outcome(code: str) -> subprocess.CompletedProcess[str]:
    script = PRELUDE + CATCH.format(code=textwrap.indent(code, "    "))
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONMALLOC": "debug"},
    )


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument_raises(name: str) -> None:
    code, error, fragment = CASES[name]
    run = outcome(code)
    assert run.returncode == 0, f"crashed (exit {run.returncode}): {run.stderr[-2000:]}"
    said = run.stdout.strip()
    classes, _, message = said.partition(" : ")
    assert error.__name__ in classes.split(), said  # the class or a subclass (BadLevel)
    assert fragment in message, said


def test_valid_arguments_still_work() -> None:
    """The prelude's side and view, and the edges that stay valid (zero counts, no levels)."""
    run = outcome(
        "side = loaded()\n"
        "assert side.best_json(0) == b'' and side.fragments(0) == []\n"
        "assert side.levels() == [('10', '1'), ('9', '1')]\n"
        "side.apply([], [])\n"
        "side.apply([('11', '1')], [(11.0, 1.0)])\n"
        'assert side.levels_from(11.0) == (1, b\'["11","1"]\')\n'
        "empty = BookSide(True)\n"
        "empty.load([], [], None, 5000)\n"
        "assert empty.levels() == [] and empty.best_key() is None\n"
        "view().delta_message(view(), 0)\n"
        "render_view_message(b'{', loaded(), 0, loaded(is_ask=True), 0)"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no error", run.stdout
