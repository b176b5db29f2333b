"""docs/grpckit.md's "Mount your own servicer" program, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from grpckit.testing.api.v1 import ping_pb2, ping_pb2_grpc

DOC = Path(__file__).resolve().parents[2] / "docs" / "grpckit.md"
HEADING = "## Mount your own servicer on a grpckit server with the default chain"


def example_program() -> str:
    section = DOC.read_text().split(HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block in the section"
    return match.group(1)


async def next_record(stream: asyncio.StreamReader, event: str) -> dict[str, Any]:
    while line := await stream.readline():
        record: dict[str, Any] = json.loads(line)
        if record["event"] == event:
            return record
    raise AssertionError(f"the program ended before logging {event!r}")


async def test_the_documented_server_serves_logs_and_exits_cleanly(tmp_path: Path) -> None:
    program = tmp_path / "echo_server.py"
    program.write_text(example_program())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(program),
        env={**os.environ, "PORT": "0"},
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        started = await asyncio.wait_for(next_record(process.stderr, "app.started"), 30)
        async with grpc.aio.insecure_channel(started["address"]) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            reply = await stub.Ping(ping_pb2.PingRequest(message="hi"), timeout=5)
        assert reply.message == "hi"
        record = await asyncio.wait_for(next_record(process.stderr, "rpc"), 10)
        assert (record["method"], record["code"], record["level"]) == ("Ping", "OK", "info")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(next_record(process.stderr, "app.stopped"), 30)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
