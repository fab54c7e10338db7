"""Shared fixtures: hermetic environment, the emulator in-process, on a loopback socket or in a process.

Plain helpers (quick emulator settings, manifests, running the CLI, consistency checks) are in
tests/helpers.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from batch_ingest.emulator import EmulatorConfig, EmulatorProcess, EmulatorServer

from .helpers import Api, FakeClock, asgi_api, client_for
from .redis_server import RedisServer


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No SMARTSTREAM_* from the developer's shell, and every relative path under tmp_path."""
    for name in list(os.environ):
        if name.startswith("SMARTSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


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


@pytest.fixture
def emulator_process() -> Iterator[Callable[..., EmulatorProcess]]:
    """Factory for `batch-ingest emulator ARGS...` processes on a free loopback port; all end with the test."""
    started: list[EmulatorProcess] = []

    def start(*args: str) -> EmulatorProcess:
        process = EmulatorProcess(*args)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real `redis-server` on a free loopback port for this test (stopped with it)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
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


@pytest.fixture
def journal_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a test's journal lives: a RAM disk when there is one. Durability is not under test here
    (test_unit_journal.py tests it), and every commit's fsync (synchronous=FULL) costs tens of ms on a busy disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="batch-ingest-test-") as folder:
        yield Path(folder)


# The modules whose tests run longest (end to end, with faults), started first.
_LONG_MODULES = ("test_faults.py", "test_hostile.py", "test_second_pass.py", "test_run.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, so that the workers finish together instead of one working on alone at the end:
    the tests of the "measures" group (they run one after another, on one worker) lead, then the
    end-to-end modules, then the rest, each in its usual order."""

    def rank(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and "measures" in group.args:
            return 0
        return 1 if item.path.name in _LONG_MODULES else 2

    items.sort(key=rank)
