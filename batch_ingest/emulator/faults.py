"""Injected faults: seeded decisions, and the one fault that needs raw ASGI, the dropped connection."""

from __future__ import annotations

from email.utils import formatdate

import httpx
from starlette.types import Receive, Scope, Send

from .store import Store


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised by the emulator to drop a connection without answering.

    Under uvicorn the exception makes the server close the socket mid-response. In-process,
    through `httpx.ASGITransport`, it surfaces in the client as the httpx error it subclasses,
    so the client sees what it would see on a real socket: no answer.
    """

    def __init__(self) -> None:
        super().__init__("emulator fault: connection dropped after the job was created")


class DropConnectionResponse:
    """An ASGI response that starts, sends part of a body, and then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id"', "more_body": True})
        raise DroppedConnection()


def chance(store: Store, rate: float) -> bool:
    """A seeded coin flip that comes up True with probability `rate`."""
    return rate > 0 and store.fault_rng.random() < rate


def retry_after_headers(store: Store, wait_s: float) -> dict[str, str]:
    """The Retry-After header for a 429 in the configured form (seconds, HTTP date, or none)."""
    form = store.config.retry_after
    if form == "none":
        return {}
    if form == "date":
        # An HTTP date has whole seconds: round up so a client honouring it waits long enough.
        return {"Retry-After": formatdate(store.clock() + wait_s + 1, usegmt=True)}
    return {"Retry-After": str(max(1, int(wait_s + 0.999)))}


def burst_429(store: Store) -> bool:
    """True when this request falls in an injected burst of 429s."""
    if store.burst_left > 0:
        store.burst_left -= 1
        return True
    if chance(store, store.config.burst_429_rate):
        store.burst_left = max(0, store.config.burst_429_len - 1)
        return True
    return False
