"""Torch networks and the shipped checkpoints (``models/checkpoints``)."""
