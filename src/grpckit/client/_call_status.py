"""Reading a finished client call's status code synchronously, from a done callback."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import grpc

__all__ = ["code_now"]


def code_now(call: Any) -> grpc.StatusCode | None:
    """The code of a finished call, read synchronously (from a done callback).

    ``call.code()`` is a coroutine that completes without suspending once the status has
    arrived; drive it one step. ``None`` if it would suspend (then the caller awaits it).
    """
    coroutine: Coroutine[Any, Any, grpc.StatusCode] = call.code()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        code: grpc.StatusCode = stop.value
        return code
    except Exception:
        return grpc.StatusCode.UNKNOWN
    coroutine.close()
    return None
