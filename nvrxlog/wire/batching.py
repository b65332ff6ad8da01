"""Cutting a node's records into batches that can always be delivered.

A batch is capped by records (``MAX_BATCH_RECORDS``) and by bytes
(``MAX_BATCH_BYTES``, far below the streamer's message limit): a batch over
that limit would make the streamer drop the connection, and the node resend
it forever. Sizes are estimated from the message length (at most 4 bytes per
character in UTF-8, plus the other fields), so no record is encoded twice; a
record that cannot fit alone has its message cut, with a marker saying so.
"""

from __future__ import annotations

from nvrxlog.wire.protocol import MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES

__all__ = ["MAX_BATCH_BYTES", "split_batches"]

#: Estimated bytes per batch: a message holds several, well under MAX_MESSAGE_BYTES.
MAX_BATCH_BYTES = min(4 << 20, MAX_MESSAGE_BYTES // 8)
_FIELDS = 256  # the record's other fields, generously
_CUT = "\n[nvrxlog: cut {} characters to fit a batch]"


def _estimate(record: dict) -> int:
    msg = record.get("msg")
    return _FIELDS + 4 * (len(msg) if isinstance(msg, str) else 64)


def split_batches(
    records: list[dict], *, max_records: int = MAX_BATCH_RECORDS, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[dict]]:
    """``records`` in order, as batches of at most ``max_records`` and about ``max_bytes`` each."""
    batches: list[list[dict]] = []
    batch: list[dict] = []
    size = 0
    for record in records:
        cost = _estimate(record)
        if cost > max_bytes:
            record, cost = _cut(record, max_bytes), max_bytes
        if batch and (len(batch) >= max_records or size + cost > max_bytes):
            batches.append(batch)
            batch, size = [], 0
        batch.append(record)
        size += cost
    if batch:
        batches.append(batch)
    return batches


def _cut(record: dict, max_bytes: int) -> dict:
    msg = record["msg"]
    keep = max(0, (max_bytes - _FIELDS) // 4 - 64)
    return {**record, "msg": msg[:keep] + _CUT.format(len(msg) - keep)}
