"""Server side: :class:`App`, :class:`ServerConfig` and the interceptor :class:`Adapter`."""

from grpckit.server._adapter import Adapter
from grpckit.server._app import App
from grpckit.server._config import ServerConfig

__all__ = ["Adapter", "App", "ServerConfig"]
