"""grpckit: a toolkit for grpc.aio services.

The first hour: build an :class:`App`, register services, add interceptors
(:mod:`grpckit.interceptors`), raise :class:`StatusError` (factories in :mod:`grpckit.errors`),
call other services through :func:`dial`.

Example::

    import grpckit
    from grpckit.interceptors import deadlines, logging, recovery

    grpckit.configure_logging("info", service="orders")
    app = grpckit.App(grpckit.ServerConfig(port=50051), name="orders",
                      interceptors=[recovery(), logging(), deadlines()])
    app.add_service(add_OrderServiceServicer_to_server, OrderService(), ORDER_SERVICE)
    asyncio.run(app.serve())
"""

from grpckit.call import CallInfo, MessageListener, Outcome, RpcKind, current_call
from grpckit.client import dial
from grpckit.defaults import default_interceptors
from grpckit.errors import StatusError
from grpckit.logs import configure_logging, get_logger
from grpckit.middleware import Interceptor, Matcher, Next, select
from grpckit.server import App, ServerConfig
from grpckit.tls import ClientTls, ServerTls

__all__ = [
    "App",
    "CallInfo",
    "ClientTls",
    "Interceptor",
    "Matcher",
    "MessageListener",
    "Next",
    "Outcome",
    "RpcKind",
    "ServerConfig",
    "ServerTls",
    "StatusError",
    "configure_logging",
    "current_call",
    "default_interceptors",
    "dial",
    "get_logger",
    "select",
]
