"""The operations HTTP port: ``/healthz`` and ``/metrics``.

Deliberately tiny (asyncio streams, HTTP/1.1, GET only): it must answer while the gRPC server is
busy and must not pull a web framework into every service process. The REST/gRPC-Web edge is a
separate component.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

#: A GET handler: request headers (lowercase names) -> (status, content type, body).
Route = Callable[[Mapping[str, str]], Awaitable[tuple[int, str, bytes]]]


class OpsServer:
    """Serves a few GET routes; every other request gets 404 (or 405 for other methods)."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self._host, self._port, self._routes = host, port, routes
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            headers: dict[str, str] = {}
            while (line := await asyncio.wait_for(reader.readline(), 10)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path in self._routes:
                status, ctype, body = await self._routes[path](headers)
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = HTTPStatus(status).phrase
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def json_response(status: int, payload: object) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(payload) + "\n").encode()
