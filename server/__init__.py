"""Loom's headless graph server: HTTP + websocket API over the engine, with a durable run queue.

Start it with `loom serve` or `python -m server`; see server/README.md for the API.
"""
