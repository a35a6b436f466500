"""A misbehaving back end for tests: a simulator behind an ASGI layer that injects faults.

`Misbehaving(app)` passes every request through to the simulator `app`, except those a
rule claims: a rule's behaviour may answer late, hang, answer something else (after the
simulator did the work, or instead of it), or fail. Rules can be added and removed while
the server runs (it is served on loopback by `tests.servers.ThreadedServer`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Call:
    """A request as the back end received it."""

    method: str
    path: str
    body: bytes
    query: str = ""


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Forward = Callable[[], Awaitable[Reply]]
Behaviour = Callable[[Call, Forward], Awaitable[Reply]]
Matcher = Callable[[Call], bool]


class Misbehaving:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.rules: list[tuple[Matcher, Behaviour]] = []
        self.calls: list[Call] = []

    def on(self, matches: Matcher, behaviour: Behaviour) -> None:
        """Calls that `matches` get `behaviour` (the first matching rule wins)."""
        self.rules.append((matches, behaviour))

    def heal(self) -> None:
        """Back to passing everything through."""
        self.rules.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode("latin-1")
        call = Call(scope["method"], scope["path"], body, query)
        self.calls.append(call)
        forward = partial(self._forward, scope, body)
        behaviour = next((b for m, b in list(self.rules) if m(call)), None)
        reply = await forward() if behaviour is None else await behaviour(call, forward)
        headers = [(k, v) for k, v in reply.headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _forward(self, scope: Scope, body: bytes) -> Reply:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        content = b"".join(m.get("body", b"") for m in sent[1:])
        return Reply(start["status"], content, list(start.get("headers", [])))


# Behaviours.


def late(seconds: float) -> Behaviour:
    """The back end does the work at once, but its answer arrives `seconds` later."""

    async def behaviour(call: Call, forward: Forward) -> Reply:
        reply = await forward()
        await asyncio.sleep(seconds)
        return reply

    return behaviour


def hung() -> Behaviour:
    """No answer, ever (until the server stops)."""

    async def behaviour(call: Call, forward: Forward) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return behaviour


def done_but_answers(status: int, body: bytes, content_type: bytes) -> Behaviour:
    """The back end does the work, then answers this instead of its own reply."""

    async def behaviour(call: Call, forward: Forward) -> Reply:
        await forward()
        return Reply(status, body, [(b"content-type", content_type)])

    return behaviour


def unavailable() -> Behaviour:
    """503 without doing anything (an outage)."""

    async def behaviour(call: Call, forward: Forward) -> Reply:
        return Reply(503, b"Service Unavailable", [(b"content-type", b"text/plain")])

    return behaviour


def answers(reply: Callable[[Call], Reply]) -> Behaviour:
    """An answer made by the test (e.g. a lookup the simulator does not offer)."""

    async def behaviour(call: Call, forward: Forward) -> Reply:
        return reply(call)

    return behaviour
