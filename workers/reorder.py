"""Per-stream reordering: release each stream's items in sequence order, waiting a bounded time for gaps.

At-least-once delivery reorders clips when a worker dies (its unacknowledged clips come back after the bus's
visibility timeout, behind later ones) or when several workers share a stage. Alert rules are a state machine
over each stream's clips in order (k-of-n windows, cooldowns), so the sink puts them back in order first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Stream(Generic[T]):
    next_seq: int | None = None
    held: dict[int, tuple[T, float]] = field(default_factory=dict)


class ReorderBuffer(Generic[T]):
    """Holds items that arrive ahead of a missing earlier seq of their stream, for at most `window_s` seconds.

    - An item whose seq is the next expected one is released at once, with any held items that follow it.
    - An item ahead of a gap is held; when the oldest held item of a stream has waited `window_s`, the gap is
      given up on and the stream resumes from its lowest held seq.
    - An item behind the stream (seq already passed) is released at once and counted in `late`.
    - A stream's first item is released at once when its seq is 0; otherwise the stream waits `window_s` in
      case earlier items are still on their way.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        if window_s < 0:
            raise ValueError(f"reorder window must be >= 0 s, got {window_s}")
        self.window_s = window_s
        self.clock = clock
        self.late = 0
        self._streams: dict[str, _Stream[T]] = {}

    def push(self, stream_id: str, seq: int, item: T) -> list[T]:
        """Add an item; returns the items now released, in order."""
        state = self._streams.setdefault(stream_id, _Stream())
        if state.next_seq is not None and seq < state.next_seq:
            self.late += 1
            return [item]
        if state.next_seq is None and (seq == 0 or self.window_s == 0):
            state.next_seq = seq
        state.held.setdefault(seq, (item, self.clock()))
        return self._release(state)

    def held(self, stream_id: str, seq: int) -> T | None:
        """The item held for (stream, seq), if any."""
        state = self._streams.get(stream_id)
        entry = state.held.get(seq) if state is not None else None
        return entry[0] if entry is not None else None

    def expire(self) -> list[T]:
        """Release what waited `window_s` or more, skipping the gaps in front of it."""
        released: list[T] = []
        now = self.clock()
        for state in self._streams.values():
            while state.held and now - min(arrived for _, arrived in state.held.values()) >= self.window_s:
                state.next_seq = min(state.held)
                released += self._release(state)
        return released

    def drain(self) -> list[T]:
        """Release everything held, each stream in seq order (on shutdown)."""
        released: list[T] = []
        for state in self._streams.values():
            for seq in sorted(state.held):
                released.append(state.held.pop(seq)[0])
                state.next_seq = seq + 1
        return released

    def __len__(self) -> int:
        return sum(len(state.held) for state in self._streams.values())

    @staticmethod
    def _release(state: _Stream[T]) -> list[T]:
        released = []
        while state.next_seq is not None and state.next_seq in state.held:
            released.append(state.held.pop(state.next_seq)[0])
            state.next_seq += 1
        return released
