"""Finding writers' temp files in the node-local tmpdir without listing it forty times a second."""

from __future__ import annotations

import os
from typing import NamedTuple

from nvrxlog.core.record import WriterId, parse_file_name
from nvrxlog.core.tmpdir import foreign_owner

__all__ = ["FoundFile", "TmpDirScanner"]

_FULL_SCAN_NS = 1_000_000_000
# Directory mtimes tick coarsely; while the last change is this recent a new
# file may not have moved it, so the directory is listed regardless.
_RECENT_DIR_CHANGE_NS = 50_000_000
_OWN_FILES = ".nvrx-aggregator"


class FoundFile(NamedTuple):
    """A temp file seen for the first time."""

    writer: WriterId
    index: int
    name: str


class TmpDirScanner:
    """Lists the tmpdir when it changed (or once a second) and reports what is new in it."""

    def __init__(self, tmp_dir: str) -> None:
        self.tmp_dir = tmp_dir
        self._names: set[str] = set()
        self._dir_mtime = -1
        self._last_scan = 0

    def scan(self, now: int, *, force: bool = False) -> tuple[list[FoundFile], list[str]]:
        """New temp files, and descriptions of entries that are not ours to read; raises OSError."""
        mtime = os.stat(self.tmp_dir).st_mtime_ns
        if (
            not force
            and mtime == self._dir_mtime
            and now - mtime > _RECENT_DIR_CHANGE_NS
            and now - self._last_scan < _FULL_SCAN_NS
        ):
            return [], []
        self._dir_mtime = mtime
        self._last_scan = now
        seen: set[str] = set()
        found: list[FoundFile] = []
        skipped: list[str] = []
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                name = entry.name
                seen.add(name)
                if name in self._names:
                    continue
                parsed = parse_file_name(name)
                if parsed is None:
                    if not name.startswith(_OWN_FILES):
                        skipped.append(f"{name!r} (not a temp file name)")
                    continue
                try:
                    regular = entry.is_file(follow_symlinks=False)
                except OSError:
                    regular = False
                if not regular:
                    kind = "symlink" if entry.is_symlink() else "not a regular file"
                    skipped.append(f"{name!r} ({kind})")
                    continue
                # In a shared sticky tmpdir another user can create files
                # with our names; reading them would put their lines in the
                # job's log as if a rank wrote them. Only new names get here,
                # so this is one lstat per file, not per scan.
                try:
                    owner = foreign_owner(entry.stat(follow_symlinks=False))
                except OSError:
                    continue  # gone since the listing
                if owner is not None:
                    skipped.append(f"{name!r} (owned by uid {owner}, not by this user)")
                    continue
                found.append(FoundFile(parsed[0], parsed[1], name))
        self._names = seen
        return found, skipped
