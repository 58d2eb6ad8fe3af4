"""The HTTP layer: thin routes, pure-ASGI middleware, dependencies."""
