"""The demo catalog ``shop up`` seeds into an empty store (disable with ``--no-demo``)."""

from __future__ import annotations

from datetime import datetime

from shop.catalog.domain import ProductDraft
from shop.catalog.store import CatalogStore
from shop.common.money import Money

DEMO_PRODUCTS = (
    ProductDraft("MUG-BLUE", "Blue mug", "Ceramic mug, 300 ml, dishwasher safe", Money(1250), 120),
    ProductDraft("MUG-RED", "Red mug", "Ceramic mug, 300 ml, dishwasher safe", Money(1250), 80),
    ProductDraft("TEE-GRPC-M", "gRPC T-shirt (M)", "Organic cotton, medium", Money(2400), 60),
    ProductDraft("TEE-GRPC-L", "gRPC T-shirt (L)", "Organic cotton, large", Money(2400), 60),
    ProductDraft("STICKER-PACK", "Sticker pack", "Ten vinyl stickers", Money(500), 1000),
    ProductDraft("NOTEBOOK-A5", "A5 notebook", "Dotted pages, 120 sheets", Money(900), 200),
    ProductDraft("HOODIE-PROTO", "Protobuf hoodie", "Heavy fleece, zip front", Money(5900), 25),
    ProductDraft("CABLE-USB-C", "USB-C cable", "Braided, 2 m", Money(1500), 3),
    ProductDraft(
        "KEYBOARD-TKL", "Mechanical keyboard", "Tenkeyless, brown switches", Money(8900), 40
    ),
    ProductDraft("MOUSE-WL", "Wireless mouse", "Silent clicks, 18-month battery", Money(2999), 150),
    ProductDraft("MONITOR-27", "27-inch monitor", "2560x1440 IPS, 144 Hz", Money(32900), 30),
    ProductDraft("LAPTOP-STAND", "Laptop stand", "Aluminium, adjustable height", Money(4500), 90),
    ProductDraft(
        "HEADPHONES-NC", "Noise-cancelling headphones", "Over-ear, 30 h battery", Money(19900), 45
    ),
    ProductDraft("WEBCAM-HD", "HD webcam", "1080p, privacy shutter", Money(5900), 70),
    ProductDraft("DESK-LAMP", "Desk lamp", "LED, warm to cool white", Money(3400), 110),
    ProductDraft("CHAIR-ERGO", "Ergonomic chair", "Mesh back, lumbar support", Money(129900), 12),
    ProductDraft(
        "BACKPACK-20L", "Backpack 20 l", "Water resistant, laptop sleeve", Money(6900), 85
    ),
    ProductDraft("BOTTLE-STEEL", "Steel bottle", "Insulated, 750 ml", Money(1999), 300),
    ProductDraft("COFFEE-BEANS", "Coffee beans", "Single origin, 1 kg", Money(2450), 400),
    ProductDraft("TEA-SAMPLER", "Tea sampler", "Twelve loose-leaf teas", Money(1800), 150),
    ProductDraft("PLANT-POT", "Plant pot", "Terracotta, 15 cm", Money(899), 220),
    ProductDraft("SOCKS-3PK", "Socks, 3 pairs", "Merino wool blend", Money(1599), 500),
    ProductDraft("PUZZLE-1000", "Jigsaw puzzle", "1000 pieces, landscape", Money(2199), 60),
    ProductDraft("BOOK-GRPC", "gRPC in practice", "Paperback, 320 pages", Money(3999), 75),
)


async def seed_if_empty(store: CatalogStore, now: datetime) -> int:
    """Add the demo products when the catalog has none; returns how many were added."""
    existing, _ = await store.page(offset=0, limit=1)
    if existing:
        return 0
    return sum(await store.upsert(DEMO_PRODUCTS, now))
