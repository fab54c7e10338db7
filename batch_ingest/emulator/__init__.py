"""The bundled SmartSTREAM Ingest API emulator: rehearse a migration, and test against it.

`EmulatorConfig` and `Store` load at once; the web app and the servers (starlette, uvicorn) load on
first use, so that the CLI, which builds its `emulator` options from `EmulatorConfig`, starts quickly.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .store import EmulatorConfig, Store

if TYPE_CHECKING:
    from .app import create_app
    from .process import EmulatorProcess
    from .server import EmulatorServer, env_for, free_port

__all__ = [
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorServer",
    "Store",
    "create_app",
    "env_for",
    "free_port",
]

_LAZY = {
    "create_app": ".app",
    "EmulatorProcess": ".process",
    "EmulatorServer": ".server",
    "env_for": ".server",
    "free_port": ".server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
