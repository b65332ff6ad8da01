"""The line grouper of captured output: a traceback or a faulthandler dump is one block, everything else a line."""

from __future__ import annotations

from nvrxlog.rank.tracebacks import MAX_LINES, Block, LineGrouper

TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/job/train.py", line 12, in <module>',
    "    main()",
    '  File "/job/model.py", line 40, in main',
    "    raise ValueError('bad')",
    "ValueError: bad",
]


def _feed(lines: list[str]) -> list[Block]:
    grouper = LineGrouper()
    blocks = [block for line in lines for block in grouper.feed(line)]
    return blocks + grouper.flush()


def test_plain_lines_pass_one_by_one() -> None:
    """Lines that are no traceback come out at once, each alone, in order."""
    grouper = LineGrouper()
    assert grouper.feed("epoch 1") == [Block("epoch 1", False)]
    assert grouper.feed("") == [Block("", False)]
    assert not grouper.holding


def test_a_traceback_is_one_block_at_its_innermost_frame() -> None:
    """A traceback's lines become one block, at the file and line where it was raised."""
    blocks = _feed(["before", *TRACEBACK, "after"])
    assert blocks == [
        Block("before", False),
        Block("\n".join(TRACEBACK), True, "model.py", 40),
        Block("after", False),
    ]


def test_a_chained_traceback_stays_one_block() -> None:
    """'During handling ...' and the traceback after it belong to the same block."""
    chained = [*TRACEBACK, "", "During handling of the above exception, another exception occurred:", "", *TRACEBACK]
    blocks = _feed([*chained, "next"])
    assert [b.is_traceback for b in blocks] == [True, False]
    assert blocks[0].text == "\n".join(chained)


def test_an_unfinished_traceback_is_held_until_flushed() -> None:
    """Without its next line the grouper cannot know a traceback ended: it holds it until flush."""
    grouper = LineGrouper()
    assert [grouper.feed(line) for line in TRACEBACK] == [[]] * len(TRACEBACK)
    assert grouper.holding and grouper.ended
    assert grouper.flush()[0].text == "\n".join(TRACEBACK)
    assert not grouper.holding


def test_a_faulthandler_dump_is_one_block_at_the_current_threads_frame() -> None:
    """A stack dump on SIGTERM is one block, said to come from a signal, at the current thread's innermost frame."""
    dump = [
        "Thread 0x00007f01 (most recent call first):",
        '  File "/x/threading.py", line 331 in wait',
        "",
        "Current thread 0x00007f02 (most recent call first):",
        '  File "/x/graph.py", line 979 in _engine_run_backward',
        '  File "/job/train.py", line 23 in main',
    ]
    blocks = _feed([*dump, "more"])
    assert blocks[0].is_traceback and (blocks[0].file, blocks[0].line) == ("graph.py", 979)
    assert blocks[0].text.startswith("the process was stopped by a signal") and dump[-1] in blocks[0].text
    assert blocks[1] == Block("more", False)


def test_a_dump_glued_to_the_last_words_is_split_from_them() -> None:
    """faulthandler writes right after an unfinished line: that line and the dump are kept apart."""
    glued = "NCCL WARN about to crashFatal Python error: Segmentation fault"
    blocks = _feed([glued, "", "Current thread 0x1 (most recent call first):", '  File "/a.py", line 1 in f'])
    assert blocks[0] == Block("NCCL WARN about to crash", False)
    assert blocks[1].is_traceback and blocks[1].text.startswith("Fatal Python error: Segmentation fault")


def test_a_traceback_that_never_ends_is_cut() -> None:
    """A writer that died mid-print cannot make the grouper hold lines without bound."""
    lines = ["Traceback (most recent call last):"] + ['  File "a.py", line 1, in f'] * (MAX_LINES * 2)
    blocks = _feed(lines)
    assert all(len(b.text.split("\n")) <= MAX_LINES for b in blocks)
    assert sum(len(b.text.split("\n")) for b in blocks) == len(lines)
