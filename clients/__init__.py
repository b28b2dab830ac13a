"""Clients of Headway: the Python SDK, the robot control loop, simulated robot tasks.

Clients speak only the wire format; they never import ``stream`` internals.
"""
