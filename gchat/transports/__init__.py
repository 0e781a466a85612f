"""Transports: thin adapters from HTTP/WebSocket to the router (parse, authenticate, hand over)."""
