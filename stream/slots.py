"""State slots of a stepped model: which stream holds which slot.

A stepped model (ASR, TTS, chat) keeps each stream's state -- a KV cache, a recurrent
state -- in one of ``size`` slots inside its executor. A stream holds its slot from
admission to close; with every slot held, the next stream is refused (close code 1013),
never queued behind the others.
"""

from __future__ import annotations

from typing import Hashable


class SlotTable:
    def __init__(self, size: int):
        if size < 0:
            raise ValueError("a slot table has size >= 0")
        self.size = size
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest slot first
        self._owner: dict[int, Hashable] = {}

    @property
    def in_use(self) -> int:
        return len(self._owner)

    def acquire(self, owner: Hashable) -> int | None:
        """A free slot for ``owner``, or None when all are held."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._owner[slot] = owner
        return slot

    def release(self, slot: int) -> None:
        """Free ``slot``; releasing a free slot is an error (it would be handed out twice)."""
        if slot not in self._owner:
            raise ValueError(f"slot {slot} is not held")
        del self._owner[slot]
        self._free.append(slot)
        self._free.sort(reverse=True)

    def active_mask(self, slots: set[int]) -> list[bool]:
        """Per slot: True where ``slots`` (the slots stepping in a batch) has it."""
        return [slot in slots for slot in range(self.size)]
