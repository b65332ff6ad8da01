"""The writer cursor: where one writer's records stand, shared by the node's tail and the streamer.

Every record carries its writer's sequence number. A cursor keeps the highest
seq taken and the writer's merge key, and decides for each record:

- ``seq`` at or below the cursor: a duplicate (a resend, or already written
  before a restart), dropped;
- ``seq`` past the cursor + 1: the records in between are missing (a gap),
  which the caller reports;
- the merge key is the record's time, but never earlier than the writer's
  previous one, so one writer's records keep their order through a
  time-ordered merge even when its clock steps back.
"""

from __future__ import annotations

__all__ = ["WriterCursor", "plausible_jump"]

#: Seqs a writer may skip at no time at all (clock granularity): a record takes a microsecond at least.
JUMP_FLOOR = 1_000
#: Records per second no writer can exceed (a rank's handler does about a million).
_MAX_RATE_PER_NS = 10_000_000 / 1e9


def plausible_jump(last_seq: int, last_key: int, seq: int, ts: int, now_ns: int) -> bool:
    """Whether a writer whose last record was ``last_seq`` at ``last_key`` can have written ``seq`` by ``ts``.

    A gap is records that were lost (a file dropped while the aggregator was
    away): written one by one, so they took time, and the record after them
    is stamped that much later. A stamp past ``now_ns`` buys no more room (it
    could be anything), so a peer cannot claim a seq far ahead of a writer's
    to have its real records taken as duplicates.
    """
    jump = seq - last_seq
    if jump <= JUMP_FLOOR or last_seq < 0:
        return True
    elapsed = min(ts, now_ns) - last_key
    return jump <= JUMP_FLOOR + elapsed * _MAX_RATE_PER_NS


class WriterCursor:
    """One writer's highest seq taken and its latest merge key."""

    __slots__ = ("seq", "key")

    def __init__(self, seq: int = -1, key: int = 0) -> None:
        self.seq = seq
        self.key = key

    def __repr__(self) -> str:
        return f"WriterCursor(seq={self.seq}, key={self.key})"

    def admit(self, seq: int, ts: int) -> int | None:
        """Take record ``seq`` stamped ``ts``: its merge key, or None for a duplicate.

        The records the caller may report missing are ``self.seq + 1 .. seq - 1``,
        read before the call.
        """
        if seq <= self.seq:
            return None
        self.seq = seq
        if ts < self.key:
            return self.key
        self.key = ts
        return ts

    def admit_run(self, first_seq: int, first_ts: int, last_seq: int, last_ts: int) -> bool:
        """Take a whole run of new records at once if it plainly follows; False (nothing taken) if not.

        A run plainly follows when its first seq is past the cursor and its
        first time is no earlier than the writer's last merge key (its times
        being in order is the caller's check), so every record's key is its time.
        """
        if first_seq <= self.seq or first_ts < self.key:
            return False
        self.seq = last_seq
        self.key = last_ts
        return True
