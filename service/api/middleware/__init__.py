"""Pure-ASGI middleware: API keys, body size, timeouts, the access log and request metrics."""
