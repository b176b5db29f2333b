"""Page tokens and page sizes for the List/Search RPCs.

Tokens are opaque to callers: base64 of an offset. A malformed token or page size is the caller's
mistake, reported as INVALID_ARGUMENT by the service layer through ``PagingError``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class PagingError(ValueError):
    """A bad page_size or page_token; ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Page:
    offset: int
    size: int

    def next_token(self, returned: int, has_more: bool) -> str:
        return encode_token(self.offset + returned) if has_more else ""


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def parse_page(page_size: int, page_token: str) -> Page:
    """Validate a request's paging fields. 0 means the default size; above the maximum is clamped."""
    if page_size < 0:
        raise PagingError("page_size", "page_size must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page(0, size)
    try:
        raw = base64.urlsafe_b64decode(page_token.encode()).decode()
        prefix, _, number = raw.partition(":")
        offset = int(number)
        if prefix != "o" or offset < 0:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise PagingError("page_token", "page_token is not one this service issued") from None
    return Page(offset, size)
