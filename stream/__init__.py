"""Headway's I/O side: websocket server, protocol validation, sessions, engine, metrics, CLI.

Nothing here does model math; models are called only from an engine's worker thread.
"""
