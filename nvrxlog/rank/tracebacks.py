"""Grouping the lines of captured output: a Python traceback is one record, at ERROR.

Output captured line by line (fd 1 and 2, or ``sys.stdout``/``sys.stderr``)
would turn a traceback printed by a subprocess or a library into one
WARNING record per line. ``LineGrouper`` holds a traceback's lines from
``Traceback (most recent call last):`` through its indented frames to the
exception line (and any chained tracebacks after it) and hands them over as
one block, labelled ERROR, at the file and line of its innermost frame.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Block", "LineGrouper"]

_START = "Traceback (most recent call last):"
# faulthandler's dump on a fatal signal (or a registered one, SIGTERM): one block too.
_DUMP_START = (
    r"(Fatal Python error: |(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):"
    r"|Stack \(most recent call first\):)"
)
_DUMP = re.compile("^" + _DUMP_START)
# faulthandler writes from the signal handler, right after whatever the process
# wrote last, which may have had no newline yet ("NCCL WARN ...Fatal Python error").
_DUMP_INSIDE = re.compile(".(?=" + _DUMP_START + ")")
_DUMP_MORE = re.compile(r"^((Current thread|Thread) 0x[0-9a-f]+ |Extension modules: |Python runtime state: |  )")
_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+)')
# A traceback that never ends (a writer died mid-print) is cut here.
MAX_LINES = 2000


class Block(NamedTuple):
    """Text to record: one line, or a whole traceback."""

    text: str
    is_traceback: bool
    file: str | None = None  # the innermost frame's file name (tracebacks)
    line: int = 0


class LineGrouper:
    """Feed complete lines in order; get back the blocks to record."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._ended = False  # the exception line arrived; a chained traceback may follow
        self._dump = False  # collecting a faulthandler dump

    @property
    def holding(self) -> bool:
        """A traceback is being collected (the caller flushes it if no line follows soon)."""
        return bool(self._lines)

    @property
    def ended(self) -> bool:
        """The traceback held has its exception line (only a chained one could still follow)."""
        return self._ended and not self._dump

    def feed(self, line: str) -> list[Block]:
        """Take one line (without its newline)."""
        inside = _DUMP_INSIDE.search(line)
        if inside is not None:
            cut = inside.end()
            return self.feed(line[:cut]) + self.feed(line[cut:])
        if not self._lines:
            if line.strip() == _START:
                self._lines.append(line)
                return []
            if _DUMP.match(line):
                self._lines.append(line)
                self._dump = True
                return []
            return [Block(line, False)]
        if self._dump:
            if not line.strip() or _DUMP_MORE.match(line) or _DUMP.match(line):
                self._lines.append(line)
                return self.flush() if len(self._lines) >= MAX_LINES else []
            return self.flush() + self.feed(line)
        if not self._ended:
            self._lines.append(line)
            if not line.startswith((" ", "\t")) and line.strip() and line.strip() != _START:
                self._ended = True  # "ValueError: ..." ends the frames
            return self.flush() if len(self._lines) >= MAX_LINES else []
        # After the exception line: a chained traceback, or the end of this one.
        stripped = line.strip()
        if not stripped or stripped in _CHAIN or stripped == _START:
            self._lines.append(line)
            if stripped == _START:
                self._ended = False
            return []
        done = self.flush()
        return done + self.feed(line)

    def flush(self) -> list[Block]:
        """Hand over what is held (at the end of input, or when no line followed in time)."""
        if not self._lines:
            return []
        lines, self._lines, self._ended = self._lines, [], False
        dump, self._dump = self._dump, False
        while lines and not lines[-1].strip():
            lines.pop()
        file, number = None, 0
        if dump:
            # A dump lists each thread's innermost frame first; the current thread's is where it stopped.
            current = next((i for i, text in enumerate(lines) if text.startswith("Current thread")), 0)
            frames = [m for m in map(_FRAME.match, lines[current:]) if m][:1]
        else:
            frames = [m for m in map(_FRAME.match, lines) if m][-1:]  # the innermost frame is last
        if frames:
            file, number = frames[0]["file"].rsplit("/", 1)[-1], int(frames[0]["line"])
        if dump and not lines[0].startswith("Fatal Python error"):
            lines.insert(0, "the process was stopped by a signal (SIGTERM, or a fatal one); its Python stack:")
        return [Block("\n".join(lines), True, file, number)]
