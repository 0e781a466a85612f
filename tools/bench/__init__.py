"""Helpers of tools/bench.py: raw WebSocket/HTTP clients, the load generator, the site builder."""
