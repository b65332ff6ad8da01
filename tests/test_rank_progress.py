"""The progress-frame rule of captured output, tested with plain text and a fake clock."""

from __future__ import annotations

from nvrxlog.rank.progress import Frames, frame_of, keep_from_last_frame


def test_a_line_shows_its_last_frame_without_escapes() -> None:
    """What a terminal would show: the text after the last \\r with content, cursor and colour codes removed."""
    assert frame_of("plain line") == "plain line"
    assert frame_of("\r 10%|#   |\r\x1b[A 20%|##  |") == " 20%|##  |"
    assert frame_of("\x1b[31mred\x1b[0m done") == "red done"
    assert frame_of("\r100%|####|\r          \r") == "100%|####|"  # a bar cleared at its end
    assert frame_of("\x1b]0;title\x07ok\x08") == "ok"


def test_an_unfinished_bar_is_shown_at_a_bounded_rate_and_only_when_it_changed() -> None:
    """The latest frame at most every interval, never twice the same; the finished line closes it."""
    now = [0.0]
    frames = Frames(every=5.0, clock=lambda: now[0])
    assert frames.unfinished("loading") is None  # an ordinary line still arriving
    assert frames.unfinished("\r 1%") == " 1%"
    now[0] = 1.0
    assert frames.unfinished("\r 2%") is None
    now[0] = 6.0
    assert frames.unfinished("\r 2%") == " 2%"
    now[0] = 12.0
    assert frames.unfinished("\r 2%") is None  # unchanged
    assert frames.finished("\r 2%\r100%") == "100%"
    assert frames.unfinished("\r 0%") == " 0%"  # the next bar starts afresh
    assert frames.finished("\r 0%") is None  # exactly what was just recorded
    assert frames.finished("a plain line") == "a plain line"


def test_only_the_current_frame_of_an_unfinished_line_is_kept() -> None:
    """Memory stays bounded however many frames a bar writes before its newline."""
    assert keep_from_last_frame("\r1%\r2%\r3%") == "\r3%"
    assert keep_from_last_frame(b"\r1%\r2%") == b"\r2%"
    assert keep_from_last_frame("no bar") == "no bar"
