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

__all__ = ["WriterCursor"]


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
