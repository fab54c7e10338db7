"""Shared fixtures: hermetic environment, the emulator in-process and on a loopback socket."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from batch_ingest.api import Auth, SmartStreamClient
from batch_ingest.emulator import EmulatorConfig, EmulatorServer, Store, create_app
from batch_ingest.settings import Secret


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No SMARTSTREAM_* from the developer's shell, and every relative path under tmp_path."""
    for name in list(os.environ):
        if name.startswith("SMARTSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class FakeClock:
    """A clock that only moves when someone sleeps on it: time passes without waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@dataclass
class Api:
    """An emulator and a way to build clients for it, in-process or over a socket."""

    mode: str
    store: Store
    make_client: Callable[..., SmartStreamClient]
    url: str


def client_for(
    url: str,
    config: EmulatorConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    static_token: bool = True,
    **kwargs: Any,
) -> SmartStreamClient:
    """A client with the emulator's credentials (static token, or email and password)."""
    clock = kwargs.pop("auth_clock", None) or time.time
    if static_token:
        auth = Auth(Secret(config.api_key), token=Secret(config.token), clock=clock)
    else:
        auth = Auth(Secret(config.api_key), email=config.email, password=Secret(config.password), clock=clock)
    kwargs.setdefault("get_retries", 0)
    return SmartStreamClient(
        base_url=url, merchant_id=config.merchant_id, auth=auth, transport=transport, **kwargs
    )


@asynccontextmanager
async def asgi_api(config: EmulatorConfig, clock: Callable[[], float] | None = None) -> AsyncIterator[Api]:
    """The emulator in-process through httpx.ASGITransport."""
    app = create_app(config, clock=clock) if clock else create_app(config)
    transport = httpx.ASGITransport(app=app)
    url = "http://emulator.test"
    yield Api("asgi", app.state.store, lambda **kw: client_for(url, config, transport=transport, **kw), url)


@pytest.fixture
def emulator_server() -> Iterator[Callable[..., EmulatorServer]]:
    """Factory for emulators on a free loopback port; all are stopped at the end of the test."""
    started: list[EmulatorServer] = []

    def start(config: EmulatorConfig | None = None, **knobs: Any) -> EmulatorServer:
        cfg = (config or EmulatorConfig(rate_limit=0)).with_changes(**knobs)
        server = EmulatorServer(cfg).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=["socket", "asgi"])
def api_factory(request, emulator_server) -> Callable[..., Any]:
    """Build an `Api` for a config, over a real loopback socket or in-process (both run)."""

    @asynccontextmanager
    async def make(config: EmulatorConfig) -> AsyncIterator[Api]:
        if request.param == "asgi":
            async with asgi_api(config) as api:
                yield api
        else:
            server = emulator_server(config)
            yield Api("socket", server.store, lambda **kw: client_for(server.url, config, **kw), server.url)

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
