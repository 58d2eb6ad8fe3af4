"""UPAK Backend: security and session state in Redis, with an in-memory fallback."""

__version__ = "0.1.0"
