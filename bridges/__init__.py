"""Bridges from trioserve's request features to application interfaces (ASGI)."""
