"""Render farm: queue backends (SQLite, Redis Streams) and the worker loop. Clients of
`pipeline`, never imported by it."""
