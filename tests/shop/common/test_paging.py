from __future__ import annotations

import pytest

from shop.common.paging import MAX_PAGE_SIZE, PagingError, encode_token, parse_page


def test_defaults_and_clamp() -> None:
    assert parse_page(0, "").size == 20
    assert parse_page(10_000, "").size == MAX_PAGE_SIZE


def test_token_round_trip() -> None:
    page = parse_page(5, "")
    token = page.next_token(5, has_more=True)
    assert parse_page(5, token).offset == 5
    assert page.next_token(3, has_more=False) == ""


@pytest.mark.parametrize(
    ("size", "token", "field"),
    [(-1, "", "page_size"), (5, "garbage!!", "page_token"), (5, encode_token(-3), "page_token")],
)
def test_rejects_bad_paging(size: int, token: str, field: str) -> None:
    with pytest.raises(PagingError) as info:
        parse_page(size, token)
    assert info.value.field == field
