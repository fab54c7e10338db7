"""batch-ingest: bulk ingest of video libraries into SmartSTREAM."""
__version__ = "0.1.0"
