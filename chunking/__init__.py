"""Execution strategies for action chunks: real-time chunking, masks, future-state rollout, delay estimation.

Pure, synchronous torch; batched along dim 0; no I/O.
"""
