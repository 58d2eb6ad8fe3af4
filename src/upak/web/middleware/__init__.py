"""Pure ASGI middleware (not BaseHTTPMiddleware): bodies stream, raw bytes stay intact."""
