"""The package's version: its one source (hatch reads it for the package metadata)."""

__version__ = "0.1.0"
