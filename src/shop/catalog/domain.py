"""Catalog domain: products, their rules, stock lines and reservations, without I/O.

>>> draft = ProductDraft(sku="MUG-1", name="Mug", description="", price=Money(1250), stock=3)
>>> product_violations(draft)
[]
>>> merge_lines([StockLine("b", 1), StockLine("a", 2), StockLine("b", 3)])
(StockLine(product_id='a', quantity=2), StockLine(product_id='b', quantity=4))
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shop.common.money import Money

MAX_SKU_LENGTH = 64
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 5000
MAX_QUERY_WORDS = 10
MAX_QUERY_LENGTH = 200
MAX_BATCH_IDS = 100
MAX_RESERVE_ITEMS = 100
MAX_REPORTED_FAILURES = 100

_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Violation = tuple[str, str]


@dataclass(frozen=True)
class ProductDraft:
    """What a caller gives to create or import a product."""

    sku: str
    name: str
    description: str
    price: Money
    stock: int


@dataclass(frozen=True)
class Product:
    """A product for sale; ``stock`` counts units on hand and not reserved."""

    id: str
    sku: str
    name: str
    description: str
    price: Money
    stock: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StockLine:
    """Units of one product, as a reservation holds them."""

    product_id: str
    quantity: int


class ReservationStatus(enum.StrEnum):
    """A reservation holds stock until released; a released one never holds it again."""

    RESERVED = "RESERVED"
    RELEASED = "RELEASED"


@dataclass(frozen=True)
class Reservation:
    """The stock an order holds. ``lines`` are merged and sorted (see merge_lines)."""

    order_id: str
    status: ReservationStatus
    lines: tuple[StockLine, ...]


class CatalogError(Exception):
    """Root of the expected failures of the catalog service."""


class SkuTakenError(CatalogError):
    """Another product already has this sku."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"a product with sku {sku!r} already exists")
        self.sku = sku


class ProductNotFoundError(CatalogError):
    """No product has this id."""

    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id!r} not found")
        self.product_id = product_id


class OutOfStockError(CatalogError):
    """A reservation asked for more units than a product has."""

    def __init__(self, product_id: str, requested: int, available: int) -> None:
        super().__init__(
            f"product {product_id!r} has {available} units in stock, {requested} were requested"
        )
        self.product_id, self.requested, self.available = product_id, requested, available


class ReservationMismatchError(CatalogError):
    """The order already holds a reservation with different lines."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} already reserved different items")
        self.order_id = order_id


class ReservationReleasedError(CatalogError):
    """The order's reservation was released (or released before it arrived): no new stock."""

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"the stock of order {order_id!r} was released; it cannot be reserved again"
        )
        self.order_id = order_id


def product_violations(draft: ProductDraft, prefix: str = "") -> list[Violation]:
    """Every rule ``draft`` breaks, fields named ``<prefix><field>``."""
    violations = [(prefix + "sku", problem) for problem in _sku_problems(draft.sku)]
    if not draft.name.strip():
        violations.append((prefix + "name", "is required"))
    elif len(draft.name) > MAX_NAME_LENGTH:
        violations.append((prefix + "name", f"must be at most {MAX_NAME_LENGTH} characters"))
    if len(draft.description) > MAX_DESCRIPTION_LENGTH:
        message = f"must be at most {MAX_DESCRIPTION_LENGTH} characters"
        violations.append((prefix + "description", message))
    if draft.price.minor < 0:
        violations.append((prefix + "price", "must not be negative"))
    if draft.stock < 0:
        violations.append((prefix + "stock", "must not be negative"))
    return violations


def _sku_problems(sku: str) -> list[str]:
    if not sku:
        return ["is required"]
    if len(sku) > MAX_SKU_LENGTH:
        return [f"must be at most {MAX_SKU_LENGTH} characters"]
    if not _SKU.match(sku):
        return ["may hold only letters, digits, '.', '_' and '-', starting with a letter or digit"]
    return []


def new_product(draft: ProductDraft, *, product_id: str, now: datetime) -> Product:
    return Product(
        id=product_id,
        sku=draft.sku,
        name=draft.name.strip(),
        description=draft.description,
        price=draft.price,
        stock=draft.stock,
        created_at=now,
        updated_at=now,
    )


def merge_lines(lines: Iterable[StockLine]) -> tuple[StockLine, ...]:
    """One line per product, quantities summed, sorted by product id.

    The fixed order makes replays comparable and has every writer lock products in the
    same order, so concurrent reservations cannot deadlock.
    """
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.product_id] = totals.get(line.product_id, 0) + line.quantity
    return tuple(StockLine(pid, qty) for pid, qty in sorted(totals.items()))


def check_replay(existing: Reservation, lines: tuple[StockLine, ...]) -> None:
    """A repeated ReserveStock succeeds only if it asks for what the order already holds."""
    if existing.status is ReservationStatus.RELEASED:
        raise ReservationReleasedError(existing.order_id)
    if existing.lines != lines:
        raise ReservationMismatchError(existing.order_id)


def search_words(query: str) -> tuple[str, ...]:
    """The distinct lowercase words of a search query, in order of first appearance."""
    return tuple(dict.fromkeys(query.lower().split()))


def query_violations(query: str) -> list[Violation]:
    if len(query) > MAX_QUERY_LENGTH:
        return [("query", f"must be at most {MAX_QUERY_LENGTH} characters")]
    if len(search_words(query)) > MAX_QUERY_WORDS:
        return [("query", f"must have at most {MAX_QUERY_WORDS} words")]
    return []


@dataclass(frozen=True)
class ImportFailure:
    """One streamed product that was not stored: its position, sku and why."""

    index: int
    sku: str
    reason: str


@dataclass
class ImportSummary:
    """Running totals of an import. Only the first MAX_REPORTED_FAILURES failures are listed."""

    created: int = 0
    updated: int = 0
    failed: int = 0
    failures: list[ImportFailure] = field(default_factory=list)

    def stored(self, created: Iterable[bool]) -> None:
        for was_created in created:
            if was_created:
                self.created += 1
            else:
                self.updated += 1

    def reject(self, index: int, sku: str, violations: Iterable[Violation]) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            reason = "; ".join(f"{path}: {problem}" for path, problem in violations)
            self.failures.append(ImportFailure(index, sku, reason))
