"""Password hashing with scrypt (standard library), parameters stored beside each hash.

>>> hasher = ScryptHasher(cost=2**4)
>>> encoded = hasher.hash("correct horse")
>>> hasher.verify("correct horse", encoded), hasher.verify("wrong horse", encoded)
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cached_property

_SCHEME = "scrypt"
_SALT_BYTES = 16
_KEY_BYTES = 32
DEFAULT_COST = 2**14  # ~70 ms on the reference machine; 16 MiB of memory per hash


class ScryptHasher:
    """Salted scrypt hashes encoded as ``scrypt$<n>$<r>$<p>$<salt>$<key>``.

    ``cost`` (scrypt's N) is the work factor of new hashes; existing hashes keep their own.
    Both methods are CPU-bound: call them from a worker thread in async code.
    """

    def __init__(self, cost: int = DEFAULT_COST, block_size: int = 8, parallelism: int = 1) -> None:
        if cost < 2 or cost & (cost - 1):
            raise ValueError("cost must be a power of two greater than 1")
        self._n, self._r, self._p = cost, block_size, parallelism

    def hash(self, password: str) -> str:
        salt = secrets.token_bytes(_SALT_BYTES)
        key = _derive(password, salt, self._n, self._r, self._p)
        return "$".join([_SCHEME, str(self._n), str(self._r), str(self._p), _b64(salt), _b64(key)])

    def verify(self, password: str, encoded: str) -> bool:
        """True when ``password`` matches; False for a mismatch or an unreadable hash."""
        try:
            scheme, n, r, p, salt, key = encoded.split("$")
            if scheme != _SCHEME:
                return False
            expected = _unb64(key)
            actual = _derive(password, _unb64(salt), int(n), int(r), int(p))
        except ValueError:
            return False
        return hmac.compare_digest(actual, expected)

    @cached_property
    def dummy_hash(self) -> str:
        """A hash of a random password, verified when no account matches (constant timing)."""
        return self.hash(secrets.token_urlsafe(16))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * n * r * (p + 1) + 2**20,
        dklen=_KEY_BYTES,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
