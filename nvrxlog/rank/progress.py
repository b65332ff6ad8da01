"""Progress bars in captured output: carriage-return frames become a few clean records.

A tqdm bar never ends its line: it rewrites it after ``\\r`` (and moves the
cursor with escape sequences when several bars share the screen). Read as
lines, all its frames would be one record, written only when the bar ends,
cut by the message cap, with raw ``\\r`` and ``ESC[A`` in the files. Instead,
only the text after the last ``\\r`` is the line's content (the frame a
terminal would show), escape sequences are removed, and while a line is
still unfinished its latest frame is recorded at most once every few seconds,
so a bar is visible during training and its final frame is never lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import AnyStr

__all__ = ["FRAME_EVERY_S", "Frames", "frame_of", "keep_from_last_frame"]

FRAME_EVERY_S = 5.0

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), and any other
# two-byte escape; then the C0 controls a terminal acts on but a file must not hold.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f]")


def frame_of(text: str) -> str:
    """What a terminal shows of ``text`` (one line): its last frame with content, without escapes."""
    if "\r" not in text and "\x1b" not in text:
        return text
    for frame in reversed(text.split("\r")):
        clean = _ESCAPES.sub("", frame)
        if clean.strip():
            return clean.rstrip()
    return ""


class Frames:
    """Decides when an unfinished line's latest frame is recorded: at most every ``every`` seconds, if new."""

    def __init__(self, every: float = FRAME_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last_at = float("-inf")
        self._last = ""

    def unfinished(self, text: str) -> str | None:
        """The frame to record now for a line still being written, or None."""
        if "\r" not in text:
            return None  # not a bar: an ordinary line still arriving
        now = self._clock()
        if now - self._last_at < self._every:
            return None
        frame = frame_of(text)
        if not frame or frame == self._last:
            return None
        self._last_at, self._last = now, frame
        return frame

    def finished(self, text: str) -> str | None:
        """The record of a line that ended: its frame, or None if a bar already recorded exactly that."""
        frame = frame_of(text)
        shown, self._last, self._last_at = self._last, "", float("-inf")
        if "\r" in text and (not frame or frame == shown):
            return None
        return frame


def keep_from_last_frame(partial: AnyStr) -> AnyStr:
    """An unfinished line (text or bytes) needs only its current frame kept: bounded while a bar runs."""
    cut = partial.rfind("\r" if isinstance(partial, str) else b"\r")  # type: ignore[arg-type]
    return partial[cut:] if cut > 0 else partial
