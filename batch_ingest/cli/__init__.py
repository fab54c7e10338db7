"""The command line: parse options, build settings, call the library, map errors to exit codes.

No business logic lives here; every command is one library call.
"""

from . import batch, emulator, ops, review, tools  # noqa: F401  (each module registers its commands on `main`)
from .common import main

__all__ = ["main"]
