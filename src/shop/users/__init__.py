"""Users: accounts, credentials and the identity check used by the order saga.

The composition root is ``shop.users.main.mount``; the rest is the service's own business.
"""
