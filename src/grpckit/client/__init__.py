"""Client side: :func:`dial` and the propagation interceptors it installs."""

from grpckit.client._deadline import REQUEST_ID_KEY, propagation_interceptors
from grpckit.client._dial import dial

__all__ = ["REQUEST_ID_KEY", "dial", "propagation_interceptors"]
