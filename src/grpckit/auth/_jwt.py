"""Access tokens: a :class:`TokenSigner` issues signed JWTs, a :class:`TokenVerifier` checks them.

Tokens are JWTs signed with an asymmetric key (``EdDSA``; ``ES256`` keys are accepted from a
JWKS), carrying ``iss``, ``sub``, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti`` and ``roles``.
The verifier trusts nothing in a token before its signature checks out: the size is bounded,
the header's ``alg`` must be one the verifier was configured with (``none`` and ``HS*`` can
never be), the key comes from a :class:`~grpckit.auth.KeySource` by ``kid`` and must be of the
type the ``alg`` implies. Verified tokens are cached (LRU) until they expire, so a client that
sends the same token on every call pays for one signature check.

Every rejection is an :class:`InvalidTokenError` with a ``reason``:

==================  =========================================================================
reason              when
==================  =========================================================================
``too_large``       longer than ``max_token_bytes``
``malformed``       not a JWT, bad JSON/base64, a claim of the wrong type (``roles`` not a
                    list of strings, ``exp`` not a number ...)
``bad_algorithm``   ``alg`` not configured (``none``, ``HS256`` ...) or not matching the key
``unknown_key``     no ``kid`` in the header, or no key known under it
``bad_signature``   the signature does not verify (forged or tampered token)
``expired``         ``exp`` is past (beyond ``leeway``)
``not_yet_valid``   ``nbf`` or ``iat`` is in the future (beyond ``leeway``)
``bad_issuer``      ``iss`` is not one of ``issuers``
``bad_audience``    ``aud`` does not contain ``audience``
``missing_claim``   ``exp``, ``iat``, ``sub``, ``iss`` or ``aud`` is missing (or ``sub`` empty)
==================  =========================================================================

Example::

    key = SigningKey.load_or_create(Path("var/keys/users.pem"))
    signer = TokenSigner(key, issuer="shop.users", audience="shop", ttl=900)
    token = signer.issue("u-1", roles=["customer"])

    verifier = TokenVerifier(StaticKeys(KeySet.of(key)), issuers=["shop.users"], audience="shop")
    claims = await verifier.verify(token.value)
    assert claims.subject == "u-1" and claims.roles == {"customer"}
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from grpckit.auth._keys import KeySource, PublicKey, SigningKey

__all__ = [
    "Claims",
    "InvalidTokenError",
    "IssuedToken",
    "TokenSigner",
    "TokenVerifier",
]

#: The algorithms a verifier may accept (asymmetric only: never ``none`` nor ``HS*``).
SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "ES256"})
#: Claims the signer sets itself; ``extra`` may not override them.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "roles"})
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]

_MESSAGES = {
    "malformed": "the token is malformed",
    "too_large": "the token is too large",
    "bad_algorithm": "the token's algorithm is not accepted",
    "unknown_key": "the token's signing key is unknown",
    "bad_signature": "the token's signature does not verify",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_issuer": "the token's issuer is not trusted",
    "bad_audience": "the token is meant for another audience",
    "missing_claim": "the token lacks a required claim",
}

# Most specific first: InvalidSignatureError is a DecodeError, all are InvalidTokenErrors.
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.InvalidKeyError, "bad_algorithm"),
)


class InvalidTokenError(Exception):
    """A token was rejected; ``reason`` says why (see the module table).

    ``str(exc)`` is a short message for humans and logs; it never contains the token.

    Example::

        try:
            claims = await verifier.verify(token)
        except InvalidTokenError as exc:
            raise unauthenticated(str(exc), reason=f"TOKEN_{exc.reason.upper()}")
    """

    reason: str

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES.get(reason, "the token is not valid"))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified content of a token.

    ``expires_at``, ``not_before`` and ``issued_at`` are Unix times; ``raw`` holds every claim
    as sent (read-only).

    Example: ``claims.subject == "u-1" and "admin" in claims.roles``
    """

    subject: str
    roles: frozenset[str]
    issuer: str
    audience: tuple[str, ...]
    expires_at: float
    not_before: float | None
    issued_at: float | None
    token_id: str | None
    raw: Mapping[str, Any] = field(repr=False, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed token: ``value`` to hand out, valid ``expires_in`` seconds.

    Example: ``reply = LoginResponse(access_token=t.value, expires_in=t.expires_in)``
    """

    value: str = field(repr=False)
    expires_in: int
    token_id: str
    expires_at: float


class TokenSigner:
    """Issues JWTs signed with ``key`` for ``audience``, valid ``ttl`` seconds.

    The header is ``{"alg": "EdDSA", "typ": "JWT", "kid": key.kid}``; the claims ``iss``,
    ``sub``, ``aud``, ``iat``, ``nbf``, ``exp`` (whole seconds, by ``clock``), a random ``jti``
    and ``roles``, plus ``extra`` (which may not override those).

    Example::

        signer = TokenSigner(key, issuer="shop.users", audience="shop", ttl=900)
        token = signer.issue("u-1", roles=["customer"], extra={"email": "ann@example.com"})
    """

    __slots__ = ("_audience", "_clock", "_issuer", "_key", "_ttl")

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        audience: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_ttl(ttl)
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._clock = clock

    def issue(
        self,
        subject: str,
        *,
        roles: Sequence[str] = (),
        ttl: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> IssuedToken:
        """A signed token for ``subject`` with ``roles``, valid ``ttl`` (default: the signer's)."""
        if not subject:
            raise ValueError("subject must not be empty")
        if isinstance(roles, str) or not all(isinstance(r, str) for r in roles):
            raise ValueError("roles must be a sequence of strings")
        lifetime = self._ttl if ttl is None else ttl
        _check_ttl(lifetime)
        clashing = _RESERVED_CLAIMS.intersection(extra or {})
        if clashing:
            raise ValueError(f"extra may not set {sorted(clashing)}")
        issued_at = math.floor(self._clock())
        expires_at = issued_at + max(1, math.ceil(lifetime))
        token_id = secrets.token_urlsafe(16)
        payload: dict[str, Any] = {
            **(extra or {}),
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": token_id,
            "roles": list(roles),
        }
        value = jwt.encode(
            payload,
            self._key._private_key(),
            algorithm=self._key.algorithm,
            headers={"typ": "JWT", "kid": self._key.kid},
        )
        return IssuedToken(
            value=value,
            expires_in=expires_at - issued_at,
            token_id=token_id,
            expires_at=float(expires_at),
        )

    def __repr__(self) -> str:
        return f"TokenSigner(kid={self._key.kid!r}, issuer={self._issuer!r}, ttl={self._ttl})"


def _check_ttl(ttl: float) -> None:
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl}")


class TokenVerifier:
    """Verifies JWTs signed by keys from ``keys``, issued by one of ``issuers`` for ``audience``.

    ``algorithms`` are the accepted ``alg`` values (asymmetric only: ``EdDSA``, ``ES256``);
    ``leeway`` seconds of clock skew are tolerated on ``exp``, ``nbf`` and ``iat``. Up to
    ``cache_size`` verified tokens are remembered (0 disables the cache): a cached token skips
    the signature check but is still rejected once expired. Keys removed from the key source
    do not evict cached tokens; they stay valid until their ``exp``. Failures are never cached.

    Example::

        verifier = TokenVerifier(RemoteJwks(fetch_jwks), issuers=["shop.users"], audience="shop")
        claims = await verifier.verify(token)     # raises InvalidTokenError
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuers: Collection[str],
        audience: str,
        algorithms: Collection[str] = ("EdDSA",),
        leeway: float = 5.0,
        cache_size: int = 10_000,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a collection of names, not a string")
        rejected = sorted(set(algorithms) - SUPPORTED_ALGORITHMS)
        if rejected or not algorithms:
            raise ValueError(
                f"algorithms must be a non-empty subset of {sorted(SUPPORTED_ALGORITHMS)}"
                f" (asymmetric only), got {sorted(algorithms)}"
            )
        if isinstance(issuers, str) or not issuers or not all(issuers):
            raise ValueError("issuers must be a non-empty collection of issuer names")
        if not audience:
            raise ValueError("audience must not be empty")
        if leeway < 0 or cache_size < 0 or max_token_bytes < 1:
            raise ValueError("leeway and cache_size must be >= 0, max_token_bytes >= 1")
        self._keys = keys
        self._issuers = list(issuers)
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._cache_size = cache_size
        self._max_token_bytes = max_token_bytes
        self._clock = clock
        self._cache: OrderedDict[bytes, Claims] = OrderedDict()
        self._hits = 0
        self._misses = 0

    async def verify(self, token: str) -> Claims:
        """The claims of ``token``; raises :class:`InvalidTokenError` when it is not valid."""
        if not isinstance(token, str):
            raise InvalidTokenError("malformed")
        if len(token) > self._max_token_bytes:
            raise InvalidTokenError("too_large")
        if not token.isascii():
            raise InvalidTokenError("malformed")
        cache_key = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._hits += 1
            try:
                self._check_times(cached.expires_at, cached.not_before, cached.issued_at)
            except InvalidTokenError as exc:
                if exc.reason == "expired":
                    del self._cache[cache_key]
                raise
            self._cache.move_to_end(cache_key)
            return cached
        self._misses += 1
        claims = await self._verify(token)
        if self._cache_size:
            self._cache[cache_key] = claims
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def cache_info(self) -> tuple[int, int]:
        """``(hits, misses)`` of the verified-token cache since creation."""
        return self._hits, self._misses

    async def _verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidTokenError("bad_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidTokenError("unknown_key", "the token names no signing key (kid)")
        key = await self._keys.key(kid)
        if key is None:
            raise InvalidTokenError("unknown_key")
        if not _key_fits(alg, key):
            raise InvalidTokenError("bad_algorithm", "the token's algorithm does not fit its key")
        payload = self._decode(token, key, alg)
        return self._claims(payload)

    def _decode(self, token: str, key: PublicKey, alg: str) -> dict[str, Any]:
        # times are checked by _check_times, on self._clock (PyJWT would read the system clock)
        options: Any = {
            "require": _REQUIRED_CLAIMS,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuers,
                options=options,
            )
        except jwt.PyJWTError as exc:
            reason = next((r for t, r in _PYJWT_REASONS if isinstance(exc, t)), "malformed")
            raise InvalidTokenError(reason) from None
        return payload

    def _claims(self, payload: dict[str, Any]) -> Claims:
        expires_at = _number(payload, "exp")
        not_before = _number(payload, "nbf")
        issued_at = _number(payload, "iat")
        assert expires_at is not None  # required by _decode
        self._check_times(expires_at, not_before, issued_at)
        subject = payload["sub"]
        if not subject:
            raise InvalidTokenError("missing_claim", "the token's subject (sub) is empty")
        roles = payload.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidTokenError("malformed", "the token's roles must be a list of strings")
        audience = payload["aud"]
        token_id = payload.get("jti")
        return Claims(
            subject=subject,
            roles=frozenset(roles),
            issuer=payload["iss"],
            audience=(audience,) if isinstance(audience, str) else tuple(audience),
            expires_at=expires_at,
            not_before=not_before,
            issued_at=issued_at,
            token_id=token_id if isinstance(token_id, str) else None,
            raw=MappingProxyType(payload),
        )

    def _check_times(
        self, expires_at: float, not_before: float | None, issued_at: float | None
    ) -> None:
        """The same comparisons as PyJWT, on ``self._clock``."""
        now = self._clock()
        if expires_at <= now - self._leeway:
            raise InvalidTokenError("expired")
        if not_before is not None and not_before > now + self._leeway:
            raise InvalidTokenError("not_yet_valid")
        if issued_at is not None and issued_at > now + self._leeway:
            raise InvalidTokenError("not_yet_valid", "the token was issued in the future")

    def __repr__(self) -> str:
        return (
            f"TokenVerifier(issuers={self._issuers!r}, audience={self._audience!r},"
            f" algorithms={sorted(self._algorithms)!r})"
        )


def _key_fits(alg: str, key: PublicKey) -> bool:
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return False


def _number(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(claim)
        number = float(value)  # OverflowError for a huge int
    except (TypeError, OverflowError):
        raise InvalidTokenError(
            "malformed", f"the token's {claim} claim must be a number"
        ) from None
    if not math.isfinite(number):
        raise InvalidTokenError("malformed", f"the token's {claim} claim must be finite")
    return number
