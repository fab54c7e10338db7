"""The bundled SmartSTREAM Ingest API emulator: rehearse a migration, and test against it."""

from .app import create_app
from .server import EmulatorServer, env_for, free_port
from .store import EmulatorConfig, Store

__all__ = ["EmulatorConfig", "EmulatorServer", "Store", "create_app", "env_for", "free_port"]
