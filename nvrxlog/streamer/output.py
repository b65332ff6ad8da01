"""The cluster-wide file: merged records written, counted and checkpointed.

The checkpoint holds, per writer, the highest seq written, and the batch
floors (``floors.py``) that stand in for the writers retired since.
"""

from __future__ import annotations

import bisect

from nvrxlog.core.output import CheckpointedOutput
from nvrxlog.streamer.floors import BatchFloors
from nvrxlog.streamer.merge import Ready

__all__ = ["ClusterOutput"]


class ClusterOutput:
    """Writes ready records in time order and keeps, per writer, the highest seq written."""

    def __init__(self, path: str, checkpoint_path: str) -> None:
        self.file = CheckpointedOutput(path, checkpoint_path)
        self.written: dict[str, int] = {}  # "node|writer" -> highest seq in the file
        # "node|writer" -> the merge key of its last line: a restart judges its next seqs by it (``plausible_jump``).
        self.keys: dict[str, int] = {}
        self.floors = BatchFloors()  # per node and spool run, the highest batch acknowledged
        self.unsaved = False  # written since the last checkpoint
        self.records = 0
        self.late = 0  # written after newer lines (a node that lagged more than max_hold)
        self._last_ts = 0

    def open(self) -> dict[str, int]:
        """Recover the file (see ``CheckpointedOutput.open``); the writers' written seqs (``floors`` recovered too)."""
        self.written = self.file.open()
        self.floors = BatchFloors(self.file.floors)
        self.keys = {key: ts for key, ts in self.file.keys.items() if key in self.written}
        return self.written

    def write(self, ready: Ready) -> None:
        """Append ``ready``'s lines in time order; raises OSError with the file as it was."""
        self.file.write("".join(ready.merged("lines")).encode("utf-8", "backslashreplace"))
        self.unsaved = True
        written, keys = self.written, self.keys
        last_ts = self._last_ts
        for part in ready.parts:
            # In each part, and from part to part, a writer's records keep their order.
            written.update(zip(part.keys, part.seqs, strict=True))
            keys.update(zip(part.keys, part.ts, strict=True))
            if part.ts[0] < last_ts:
                # Older than lines already written: from a node that lagged more
                # than max_hold (or reached its own node late). Written, counted.
                self.late += bisect.bisect_left(part.ts, last_ts)
            self._last_ts = max(self._last_ts, part.ts[-1])
        self.records += len(ready)

    def checkpoint(self) -> None:
        """Make what is written durable in the checkpoint; raises OSError."""
        self.file.save(self.written, self.floors.saved(), self.keys)
        self.unsaved = False

    def close(self) -> None:
        self.file.close()
