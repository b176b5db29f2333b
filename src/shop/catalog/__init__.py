"""Catalog: products, prices and stock reservations for orders.

The composition root is ``shop.catalog.main.mount``; the rest is the service's own business.
"""
