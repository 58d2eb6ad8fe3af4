"""Policies over the store: replay protection, rate limiting, caching, sessions."""
