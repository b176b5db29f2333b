"""Access tokens: compact JWTs signed with HMAC-SHA256 (RFC 7519, ``alg`` HS256).

Whoever holds the same secret (the gateway, grpckit's auth interceptor) can check them with
any JWT library; :meth:`TokenIssuer.verify` is the reference check used by the tests.

>>> from datetime import UTC, datetime
>>> issuer = TokenIssuer(b"k" * 32, ttl_seconds=60)
>>> now = datetime(2030, 1, 1, tzinfo=UTC)
>>> token = issuer.issue(subject="u1", roles=("customer",), now=now)
>>> issuer.verify(token.value, now=now)["sub"], token.expires_in
('u1', 60)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

ISSUER = "shop.users"
MIN_SECRET_BYTES = 32
_HEADER = {"alg": "HS256", "typ": "JWT"}


class InvalidTokenError(ValueError):
    """A token that is malformed, wrongly signed, from another issuer or expired."""


@dataclass(frozen=True)
class AccessToken:
    """A signed token and its lifetime in seconds."""

    value: str
    expires_in: int


class TokenIssuer:
    """Signs access tokens carrying the user id (``sub``), roles, ``iat`` and ``exp``."""

    def __init__(self, secret: bytes, *, ttl_seconds: int = 3600) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must have at least {MIN_SECRET_BYTES} bytes")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._secret = secret
        self._ttl = ttl_seconds

    def issue(self, *, subject: str, roles: Sequence[str], now: datetime) -> AccessToken:
        issued_at = int(now.timestamp())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "roles": list(roles),
            "iat": issued_at,
            "exp": issued_at + self._ttl,
        }
        signing_input = f"{_encode_json(_HEADER)}.{_encode_json(claims)}"
        return AccessToken(f"{signing_input}.{self._sign(signing_input)}", self._ttl)

    def verify(self, token: str, *, now: datetime) -> dict[str, Any]:
        """The claims of a valid token; raises InvalidTokenError otherwise."""
        try:
            header, claims, signature = token.split(".")
            if not hmac.compare_digest(signature, self._sign(f"{header}.{claims}")):
                raise InvalidTokenError("bad signature")
            if _decode_json(header) != _HEADER:
                raise InvalidTokenError("unexpected header")
            payload = _decode_json(claims)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidTokenError(str(exc)) from None
        if payload.get("iss") != ISSUER:
            raise InvalidTokenError("unexpected issuer")
        if not isinstance(payload.get("exp"), int) or payload["exp"] <= now.timestamp():
            raise InvalidTokenError("expired")
        return payload

    def _sign(self, signing_input: str) -> str:
        digest = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
        return _b64(digest)


def _encode_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _decode_json(text: str) -> dict[str, Any]:
    value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
