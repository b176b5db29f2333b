"""Signing keys and key sets: Ed25519 keys on disk, JWKS documents, and where verifiers find keys.

The token issuer holds one :class:`SigningKey` (an Ed25519 private key kept as a PEM file,
created on first start by :meth:`SigningKey.load_or_create`) and publishes its public half as a
JWKS document (:func:`jwks`). Verifiers look keys up by ``kid`` through a :class:`KeySource`:
:class:`StaticKeys` over a fixed :class:`KeySet`, or :class:`RemoteJwks`, which fetches the
issuer's JWKS and refreshes it when a token names a key it has not seen (key rotation).

A key's ``kid`` is its RFC 7638 JWK thumbprint, so the same key always gets the same id.

Example::

    key = SigningKey.load_or_create(Path("var/keys/users.pem"))
    document = jwks(key)                      # served by the users service
    source = RemoteJwks(fetch_document)       # used by every other service
    public = await source.key(key.kid)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from grpckit.logs import get_logger

__all__ = [
    "KeySet",
    "KeySource",
    "KeySourceUnavailableError",
    "PublicKey",
    "RemoteJwks",
    "SigningKey",
    "StaticKeys",
    "jwks",
]

#: A verification key: Ed25519 (``EdDSA``) or EC P-256 (``ES256``).
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

_LOG = get_logger("grpckit.auth.keys")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, what: str, size: int) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise ValueError(f"JWKS: {what} must be a base64url string")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"JWKS: {what} is not valid base64url") from None
    if len(data) != size:
        raise ValueError(f"JWKS: {what} must be {size} bytes, got {len(data)}")
    return data


def _thumbprint(members: Mapping[str, str]) -> str:
    """RFC 7638: base64url(sha256(JSON of the required members, sorted, no whitespace))."""
    canonical = json.dumps(dict(members), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class SigningKey:
    """An Ed25519 private key that signs tokens (``alg`` ``EdDSA``), named by its thumbprint.

    Example::

        key = SigningKey.generate()
        again = SigningKey.from_pem(key.private_pem())
        assert again.kid == key.kid and key.public_jwk()["kty"] == "OKP"
    """

    __slots__ = ("_private", "_x", "algorithm", "kid")

    algorithm: str
    kid: str

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._x = _b64url(raw)
        self.algorithm = "EdDSA"
        self.kid = _thumbprint({"crv": "Ed25519", "kty": "OKP", "x": self._x})

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """The key in an unencrypted PEM (PKCS#8); ``ValueError`` if it is not an Ed25519 key."""
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not an unencrypted PEM private key ({type(exc).__name__})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"not an Ed25519 private key (got {type(private).__name__})")
        return cls(private)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The key stored at ``path``, created (mode 0600, parents 0700) when missing.

        Safe when several processes start at once: the PEM is written to a temporary file in the
        same directory and hard-linked to ``path``; whoever links first wins and the others read
        the winner's key. Raises ``ValueError`` naming the path when the file exists but holds
        no Ed25519 PEM private key.

        Example: ``key = SigningKey.load_or_create(Path("var/keys/users.pem"))``
        """
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        _make_private_dirs(path.parent)
        key = cls.generate()
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as temp:
                temp.write(key.private_pem())
                temp.flush()
                os.fsync(temp.fileno())
            try:
                os.link(temp_name, path)
            except FileExistsError:
                return cls._load(path)  # another process won the race
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
        _LOG.info("auth.key_created", path=str(path), kid=key.kid)
        return key

    @classmethod
    def _load(cls, path: Path) -> SigningKey:
        data = path.read_bytes()
        try:
            return cls.from_pem(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (a secret: store it with mode 0600)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key(self) -> Ed25519PublicKey:
        """The public half, which verifies this key's signatures."""
        return self._private.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037), ready for a JWKS document."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self._x,
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",
        }

    def _private_key(self) -> Ed25519PrivateKey:
        """For the token signer (same package); not part of the public surface."""
        return self._private

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700 (existing ones untouched)."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):
            each.mkdir(mode=0o700)


def jwks(*keys: SigningKey) -> dict[str, list[dict[str, str]]]:
    """A JWKS document publishing the public halves of ``keys`` (current and previous).

    Example: ``jwks(current, previous) == {"keys": [current.public_jwk(), previous.public_jwk()]}``
    """
    return {"keys": [key.public_jwk() for key in keys]}


class KeySet:
    """Public verification keys by ``kid``.

    Example::

        keys = KeySet.from_jwks({"keys": [signing_key.public_jwk()]})
        assert keys.get(signing_key.kid) is not None and len(keys) == 1
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, PublicKey] | None = None) -> None:
        self._keys: dict[str, PublicKey] = dict(keys or {})

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeySet:
        """The usable keys of a JWKS document.

        Keeps Ed25519 (``OKP``, alg ``EdDSA``) and P-256 (``EC``, alg ``ES256``) signature keys
        (``use`` absent or ``"sig"``) that have a ``kid``; skips every other key, symmetric
        ``oct`` keys included. Raises ``ValueError`` when the document is malformed: no
        ``keys`` list, an entry that is not an object, a usable key with bad coordinates, or two
        different keys under one ``kid``.
        """
        if not isinstance(document, Mapping):
            raise ValueError("JWKS: the document must be a JSON object")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError('JWKS: the document must have a "keys" list')
        keys: dict[str, PublicKey] = {}
        raw_by_kid: dict[str, bytes] = {}
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ValueError("JWKS: every key must be a JSON object")
            parsed = _parse_jwk(entry)
            if parsed is None:
                continue
            kid, key = parsed
            raw = _public_bytes(key)
            if raw_by_kid.setdefault(kid, raw) != raw:
                raise ValueError(f"JWKS: two different keys share the kid {kid!r}")
            keys[kid] = key
        return cls(keys)

    @classmethod
    def of(cls, *keys: SigningKey) -> KeySet:
        """The public halves of ``keys``. Example: ``StaticKeys(KeySet.of(signing_key))``"""
        return cls({key.kid: key.public_key() for key in keys})

    def get(self, kid: str) -> PublicKey | None:
        """The key named ``kid``, or None."""
        return self._keys.get(kid)

    def kids(self) -> frozenset[str]:
        """The ids of the keys in the set."""
        return frozenset(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet(kids={sorted(self._keys)!r})"


def _parse_jwk(entry: Mapping[str, Any]) -> tuple[str, PublicKey] | None:
    """``(kid, key)`` for a usable signature key, None for one to skip; ValueError if broken."""
    kty, crv, alg, use = (entry.get(n) for n in ("kty", "crv", "alg", "use"))
    if use not in (None, "sig"):
        return None
    if kty == "OKP" and crv == "Ed25519" and alg in (None, "EdDSA"):
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            return None
        x = _b64url_decode(entry.get("x"), f"x of key {kid!r}", 32)
        return kid, Ed25519PublicKey.from_public_bytes(x)
    if kty == "EC" and crv == "P-256" and alg in (None, "ES256"):
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            return None
        x = _b64url_decode(entry.get("x"), f"x of key {kid!r}", 32)
        y = _b64url_decode(entry.get("y"), f"y of key {kid!r}", 32)
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        )
        try:
            return kid, numbers.public_key()
        except ValueError:
            raise ValueError(f"JWKS: key {kid!r} is not a point on P-256") from None
    return None


def _public_bytes(key: PublicKey) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@runtime_checkable
class KeySource(Protocol):
    """Where a verifier finds the public key a token's ``kid`` names (None when unknown)."""

    async def key(self, kid: str) -> PublicKey | None:
        """The key named ``kid``, or None. Never raises for an unknown or unreachable key."""
        ...


class StaticKeys:
    """A :class:`KeySource` over a fixed :class:`KeySet`; :meth:`replace` swaps it.

    Example::

        source = StaticKeys(KeySet.of(signing_key))
        source.replace(KeySet.of(signing_key, next_key))   # rotation without a restart
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: KeySet | None = None) -> None:
        self._keys = keys if keys is not None else KeySet()

    @property
    def keys(self) -> KeySet:
        """The current key set."""
        return self._keys

    def replace(self, keys: KeySet) -> None:
        """Use ``keys`` from now on."""
        self._keys = keys

    async def key(self, kid: str) -> PublicKey | None:
        """The key named ``kid`` in the current set, or None."""
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"StaticKeys({self._keys!r})"


class KeySourceUnavailableError(ConnectionError):
    """The keys cannot be fetched and none were ever loaded: a token cannot be judged now.

    Not a verdict on the token: callers should answer "retry later" (UNAVAILABLE), not
    UNAUTHENTICATED.
    """


class RemoteJwks:
    """A :class:`KeySource` over a JWKS document fetched by ``fetch``, refreshed on demand.

    A known ``kid`` is answered from memory. An unknown one triggers a refresh, then a second
    look. Refreshes are single-flight (concurrent callers share one fetch) and happen at most
    once per ``min_refresh_interval`` seconds (by ``clock``), except while no document was
    ever loaded, so a flood of tokens with made-up kids cannot hammer the issuer. A failing
    fetch or a malformed document logs a warning and keeps the keys already known; the caller
    gets None for an unknown ``kid``, never the fetch's exception — except while no document
    was ever loaded: then :class:`KeySourceUnavailableError` says the token cannot be judged
    yet (the issuer may be restarting).

    Example::

        async def fetch() -> Mapping[str, Any]:
            reply = await users.GetJwks(GetJwksRequest())
            return json.loads(reply.jwks_json)

        verifier = TokenVerifier(RemoteJwks(fetch), issuers=["shop.users"], audience="shop")
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_refresh_interval < 0:
            raise ValueError(f"min_refresh_interval must be >= 0, got {min_refresh_interval}")
        self._fetch = fetch
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._keys = KeySet()
        self._loaded = False
        self._last_refresh: float | None = None
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def keys(self) -> KeySet:
        """The keys of the last document fetched successfully (empty before the first)."""
        return self._keys

    async def key(self, kid: str) -> PublicKey | None:
        """The key named ``kid``, refreshing the document once when it is not known yet."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        task = self._refreshing
        if task is None:
            if not self._may_refresh():
                return None
            task = self._start_refresh()
        # shield: a caller cancelled while waiting must not cancel the fetch others share
        await asyncio.shield(task)
        found = self._keys.get(kid)
        if found is None and not self._loaded:
            raise KeySourceUnavailableError(
                "the signing keys could not be fetched yet (is the issuer reachable?)"
            )
        return found

    def _may_refresh(self) -> bool:
        if not self._loaded or self._last_refresh is None:
            return True
        return self._clock() - self._last_refresh >= self._min_refresh_interval

    def _start_refresh(self) -> asyncio.Task[None]:
        self._last_refresh = self._clock()
        task = asyncio.ensure_future(self._refresh())
        self._refreshing = task

        def done(_: asyncio.Task[None]) -> None:
            if self._refreshing is task:
                self._refreshing = None

        task.add_done_callback(done)
        return task

    async def _refresh(self) -> None:
        try:
            document = await self._fetch()
            keys = KeySet.from_jwks(document)
        except Exception as exc:
            _LOG.warning("auth.jwks_refresh_failed", error=type(exc).__name__, detail=str(exc))
            return
        self._keys = keys
        self._loaded = True
        _LOG.info("auth.jwks_refreshed", keys=len(keys))

    def __repr__(self) -> str:
        return f"RemoteJwks(keys={len(self._keys)}, loaded={self._loaded})"
