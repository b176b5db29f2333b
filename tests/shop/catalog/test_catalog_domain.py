"""Catalog domain rules: pure, in memory."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime

import pytest

from shop.catalog import domain
from shop.catalog.domain import (
    ImportSummary,
    ProductDraft,
    Reservation,
    ReservationStatus,
    StockLine,
)
from shop.common.money import Money


def draft(**changes: object) -> ProductDraft:
    base = {"sku": "MUG-1", "name": "Mug", "description": "", "price": Money(1250), "stock": 3}
    return ProductDraft(**{**base, **changes})  # type: ignore[arg-type]


def test_a_good_draft_has_no_violations() -> None:
    assert domain.product_violations(draft()) == []
    assert domain.product_violations(draft(price=Money(0), stock=0)) == []


def test_every_violation_is_reported_under_the_prefix() -> None:
    bad = draft(sku="", name=" ", description="x" * 5001, price=Money(-1), stock=-1)
    assert domain.product_violations(bad, "product.") == [
        ("product.sku", "is required"),
        ("product.name", "is required"),
        ("product.description", "must be at most 5000 characters"),
        ("product.price", "must not be negative"),
        ("product.stock", "must not be negative"),
    ]


@pytest.mark.parametrize("sku", ["-A", "A B", "A/B", "Ä", "A" * 65])
def test_bad_skus(sku: str) -> None:
    assert [field for field, _ in domain.product_violations(draft(sku=sku))] == ["sku"]


def test_new_product_trims_the_name() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    product = domain.new_product(draft(name="  Mug  "), product_id="p", now=now)
    assert (product.name, product.created_at, product.updated_at) == ("Mug", now, now)


def test_merge_lines_sums_and_sorts() -> None:
    merged = domain.merge_lines([StockLine("b", 1), StockLine("a", 2), StockLine("b", 3)])
    assert merged == (StockLine("a", 2), StockLine("b", 4))


def test_replays() -> None:
    lines = (StockLine("a", 1),)
    domain.check_replay(Reservation("o", ReservationStatus.RESERVED, lines), lines)
    with pytest.raises(domain.ReservationMismatchError):
        domain.check_replay(
            Reservation("o", ReservationStatus.RESERVED, lines), (StockLine("a", 2),)
        )
    with pytest.raises(domain.ReservationReleasedError):
        domain.check_replay(Reservation("o", ReservationStatus.RELEASED, ()), lines)


def test_search_words_and_query_limits() -> None:
    assert domain.search_words("  Blue MUG blue ") == ("blue", "mug")
    assert domain.search_words("") == ()
    assert domain.query_violations("a " * 10) == []
    assert domain.query_violations("a b c d e f g h i j k") == [
        ("query", "must have at most 10 words")
    ]
    assert domain.query_violations("x" * 201) == [("query", "must be at most 200 characters")]


def test_import_summary_counts_everything_but_lists_a_bounded_number() -> None:
    summary = ImportSummary()
    summary.stored([True, False, True])
    for i in range(domain.MAX_REPORTED_FAILURES + 5):
        summary.reject(i, f"S{i}", [("product.sku", "is required"), ("product.price", "bad")])
    assert (summary.created, summary.updated, summary.failed) == (2, 1, 105)
    assert len(summary.failures) == domain.MAX_REPORTED_FAILURES
    assert summary.failures[0] == domain.ImportFailure(
        0, "S0", "product.sku: is required; product.price: bad"
    )


def test_docstring_examples_run() -> None:
    result = doctest.testmod(domain)
    assert (result.failed, result.attempted > 0) == (0, True)
