"""Turning a ``logging.LogRecord`` into the text of one record, safely.

Shared by every nvrxlog handler so that a message that cannot be formatted,
an exception, a stack or an oversized message is treated the same everywhere.
"""

from __future__ import annotations

import logging

from nvrxlog.core.report import ErrorCounter, describe, safe_repr

__all__ = ["MAX_MESSAGE_CHARS", "full_message", "unformattable", "message_text"]

# One record stays far below a temp file; longer messages are cut with a marker.
MAX_MESSAGE_CHARS = 1 << 20

_formatter = logging.Formatter()


def message_text(record: logging.LogRecord, errors: ErrorCounter) -> str:
    """The record's whole text: message, exception and stack, never raising."""
    try:
        msg = record.getMessage()
    except RecursionError:
        raise
    except Exception as exc:
        msg = unformattable(record, exc, errors)
    if record.exc_info or record.exc_text or record.stack_info or len(msg) > MAX_MESSAGE_CHARS:
        msg = full_message(record, msg, errors)
    return msg


def unformattable(record: logging.LogRecord, exc: Exception, errors: ErrorCounter) -> str:
    """A visible stand-in for a message whose formatting raised."""
    why = f"{type(exc).__name__}: {describe(exc)}"
    errors.report("format", f"a message could not be formatted ({why})")
    return f"[nvrxlog: message could not be formatted: {why}] msg={safe_repr(record.msg)} args={safe_repr(record.args)}"


def full_message(record: logging.LogRecord, msg: str, errors: ErrorCounter) -> str:
    """``msg`` with the exception and stack appended, cut to MAX_MESSAGE_CHARS."""
    if record.exc_info and not record.exc_text:
        record.exc_text = _formatter.formatException(record.exc_info)
    if record.exc_text:
        msg = f"{msg}\n{record.exc_text}"
    if record.stack_info:
        msg = f"{msg}\n{_formatter.formatStack(record.stack_info)}"
    if len(msg) > MAX_MESSAGE_CHARS:
        cut = len(msg) - MAX_MESSAGE_CHARS
        errors.report("truncated", f"a message over {MAX_MESSAGE_CHARS} characters was cut")
        msg = f"{msg[:MAX_MESSAGE_CHARS]}... [nvrxlog: truncated {cut} characters]"
    return msg
