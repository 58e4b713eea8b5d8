"""Who may open a WebSocket: bearer tokens, the Origin allow-list, connection places. Pure.

The shell hands over the request's headers before the upgrade and carries out the answer.

- A token comes in the ``Authorization: Bearer T`` header, or, from a browser (which cannot
  set headers on a WebSocket), as the subprotocol ``marketpipe.bearer.<T in base64url>``
  offered beside ``marketpipe``; the server answers with ``marketpipe``, never echoing the
  token. Never in the URL: URLs end up in access logs and browser history.
- With an Origin allow-list, a request without ``Origin`` is no browser's: it is admitted
  only if it authenticated with a token.
- Places are taken when a request is admitted, before the upgrade, and given back when the
  connection ends: concurrent upgrades cannot pass the limit between the check and the count.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from enum import Enum

SUBPROTOCOL = "marketpipe"
TOKEN_SUBPROTOCOL_PREFIX = "marketpipe.bearer."


class Refusal(Enum):
    """Why a request is not upgraded: (HTTP status, text)."""

    NOT_SERVING = (503, "gateway is not serving yet or any more")
    FULL = (503, "too many connections")
    BAD_TOKEN = (401, "a valid bearer token is required")
    BAD_ORIGIN = (403, "origin not allowed")
    NO_ORIGIN = (403, "an Origin header (or a bearer token) is required")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


def subprotocol_for(token: str) -> str:
    """The subprotocol a browser offers (beside ``marketpipe``) to present ``token``."""
    encoded = base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()
    return TOKEN_SUBPROTOCOL_PREFIX + encoded


def presented_token(authorization: str | None, subprotocols: str | None) -> str | None:
    """The token a request presents: the bearer header first, else a token subprotocol."""
    if authorization:
        scheme, _, credential = authorization.strip().partition(" ")
        return credential.strip() if scheme.lower() == "bearer" else None
    for offered in (subprotocols or "").split(","):
        offered = offered.strip()
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            encoded = offered[len(TOKEN_SUBPROTOCOL_PREFIX) :]
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
    return None


def token_valid(token: str | None, tokens: Sequence[str]) -> bool:
    """An empty token, presented or configured, admits no one."""
    if not token:
        return False
    presented = token.encode()
    # compare against every configured token: the time taken does not say which one matched
    matched = False
    for good in tokens:
        if good and hmac.compare_digest(presented, good.encode()):
            matched = True
    return matched


class ConnectionPlaces:
    """At most ``limit`` connections: a place is taken before the upgrade, given back after."""

    __slots__ = ("in_use", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use = max(0, self.in_use - 1)


class Admission:
    """The gateway's door: ``admit`` decides and, when it admits, takes a place."""

    def __init__(
        self, max_connections: int, tokens: Sequence[str], allowed_origins: Sequence[str]
    ) -> None:
        self.places = ConnectionPlaces(max_connections)
        self.tokens = tuple(tokens)
        self.allowed_origins = frozenset(allowed_origins)
        self.serving = False

    def admit(
        self, authorization: str | None, subprotocols: str | None, origin: str | None
    ) -> Refusal | None:
        """None: admitted, and a place is taken (give it back when the connection ends)."""
        if not self.serving:
            return Refusal.NOT_SERVING
        authenticated = False
        if self.tokens:
            if not token_valid(presented_token(authorization, subprotocols), self.tokens):
                return Refusal.BAD_TOKEN
            authenticated = True
        if self.allowed_origins:
            if origin is None:
                if not authenticated:
                    return Refusal.NO_ORIGIN
            elif origin not in self.allowed_origins:
                return Refusal.BAD_ORIGIN
        if not self.places.take():
            return Refusal.FULL
        return None
