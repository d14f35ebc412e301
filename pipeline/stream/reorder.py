"""Per-stream reordering: release each stream's items in sequence order, waiting a bounded time for gaps.

At-least-once delivery reorders clips when a worker dies (its unacknowledged clips come back after the bus's
visibility timeout, behind later ones) or when several workers share a stage. Alert rules are a state machine
over each stream's clips in order (k-of-n windows, cooldowns), so the sink puts them back in order first.

The buffer also guards each stream's position: one corrupt or forged seq far ahead (say 10**12) would otherwise
become the stream's position, and every real clip after it would count as late and never alert. How the decoder
numbers clips decides what is plausible: a file starts at seq 0 on every decode (a re-decode repeats known keys,
which arrive behind the position and are released as late, harmless), while a live stream or looped file starts
at the decoder's clock in milliseconds, so a decoder restart jumps ahead by about the milliseconds it was away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline.errors import ClipwatchError

T = TypeVar("T")


class SeqJumpError(ClipwatchError, ValueError):
    """An item whose seq is implausibly far ahead of its stream's position: ``"<stream>:<seq>: <reason>"``."""


@dataclass
class _Stream(Generic[T]):
    next_seq: int | None = None
    held: dict[int, tuple[T, float]] = field(default_factory=dict)
    top: int | None = None  # the highest seq accepted (released or held)
    top_decoded_at: float | None = None  # unix time the decoder published `top`


class ReorderBuffer(Generic[T]):
    """Holds items that arrive ahead of a missing earlier seq of their stream, for at most `window_s` seconds.

    - An item whose seq is the next expected one is released at once, with any held items that follow it.
    - An item ahead of a gap is held; when the oldest held item of a stream has waited `window_s`, the gap is
      given up on and the stream resumes from its lowest held seq.
    - An item behind the stream (seq already passed) is released at once and counted in `late`.
    - A stream's first item is released at once when its seq is 0; otherwise the stream waits `window_s` in
      case earlier items are still on their way.
    - With `max_jump`, an item more than `max_jump` seqs ahead of the stream's highest seq is refused
      (`SeqJumpError`) and changes nothing, unless it reads as a live stream's decoder restart: its seq, as
      milliseconds, lies between the decode times (``decoded_at``, unix seconds) of the stream's highest seq and
      of the item itself, give or take `max_jump` ms.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic, *, max_jump: int | None = None):
        if window_s < 0:
            raise ValueError(f"reorder window must be >= 0 s, got {window_s}")
        if max_jump is not None and max_jump < 1:
            raise ValueError(f"max seq jump must be >= 1, got {max_jump}")
        self.window_s = window_s
        self.clock = clock
        self.max_jump = max_jump
        self.late = 0
        self._streams: dict[str, _Stream[T]] = {}

    def push(self, stream_id: str, seq: int, item: T, decoded_at: float | None = None) -> list[T]:
        """Add an item; returns the items now released, in order. SeqJumpError if its seq is implausible."""
        state = self._streams.setdefault(stream_id, _Stream())
        if state.next_seq is not None and seq < state.next_seq:
            self.late += 1
            return [item]
        self._check_jump(stream_id, state, seq, decoded_at)
        if state.top is None or seq > state.top:
            state.top, state.top_decoded_at = seq, decoded_at
        if state.next_seq is None and (seq == 0 or self.window_s == 0):
            state.next_seq = seq
        state.held.setdefault(seq, (item, self.clock()))
        return self._release(state)

    def resume(self, stream_id: str, seq: int, decoded_at: float | None = None) -> None:
        """Continue a stream after `seq` (its last item processed before a restart): later seqs flow at once."""
        state = self._streams.setdefault(stream_id, _Stream())
        if state.top is None or seq > state.top:
            state.next_seq, state.top, state.top_decoded_at = seq + 1, seq, decoded_at

    def _check_jump(self, stream_id: str, state: _Stream[T], seq: int, decoded_at: float | None) -> None:
        if self.max_jump is None or state.top is None or seq <= state.top + self.max_jump:
            return
        if (decoded_at is not None and state.top_decoded_at is not None
                and state.top_decoded_at * 1000 - self.max_jump <= seq <= decoded_at * 1000 + self.max_jump):
            return  # a live stream's decoder restarted: seqs start again from its clock in ms
        raise SeqJumpError(f"{stream_id}:{seq}: seq is {seq - state.top} ahead of the stream's position "
                           f"{state.top} (more than alerts.max_seq_jump {self.max_jump}, and not a decoder restart)")

    def items(self) -> list[T]:
        """Every item held, all streams."""
        return [item for state in self._streams.values() for item, _ in state.held.values()]

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
