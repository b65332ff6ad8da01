"""TmpDirScanner: new temp files found, foreign entries reported, quiet rescans cheap."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nvrxlog.core.record import WriterId, file_name
from nvrxlog.node.scanner import FoundFile, TmpDirScanner

W1 = WriterId(prefix="job", local_rank=0, pid=1234, start_ns=1_700_000_000_000_000_000)
W2 = WriterId(prefix="job-b", local_rank=None, pid=99, start_ns=42)


def _touch(directory: Path, name: str) -> None:
    (directory / name).write_bytes(b"")


def _set_dir_mtime(directory: Path, mtime_ns: int) -> None:
    os.utime(directory, ns=(mtime_ns, mtime_ns))


def test_finds_writers_temp_files(tmp_path: Path) -> None:
    """Files named by file_name() are found with their writer and index; nothing is skipped."""
    for writer, index in ((W1, 0), (W1, 1), (W2, 123456)):
        _touch(tmp_path, file_name(writer, index))
    found, skipped = TmpDirScanner(str(tmp_path)).scan(time.time_ns())
    assert sorted(found) == sorted(
        [
            FoundFile(W1, 0, file_name(W1, 0)),
            FoundFile(W1, 1, file_name(W1, 1)),
            FoundFile(W2, 123456, file_name(W2, 123456)),
        ]
    )
    assert skipped == []


def test_empty_dir(tmp_path: Path) -> None:
    """An empty tmpdir gives nothing found and nothing skipped."""
    assert TmpDirScanner(str(tmp_path)).scan(time.time_ns()) == ([], [])


def test_symlink_and_foreign_names_are_skipped(tmp_path: Path) -> None:
    """A symlink with a temp-file name and a foreign name are reported as skipped, not found."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "real").write_bytes(b"x")
    link_name = file_name(W1, 3)
    os.symlink(target / "real", tmp_path / link_name)
    _touch(tmp_path, "random.txt")
    _touch(tmp_path, file_name(W1, 0))
    found, skipped = TmpDirScanner(str(tmp_path)).scan(time.time_ns())
    assert found == [FoundFile(W1, 0, file_name(W1, 0))]
    assert sorted(skipped) == sorted(
        [
            f"{link_name!r} (symlink)",
            "'random.txt' (not a temp file name)",
            "'elsewhere' (not a temp file name)",
        ]
    )


def test_directory_with_a_temp_file_name_is_skipped(tmp_path: Path) -> None:
    """A directory named like a temp file is reported as not a regular file."""
    name = file_name(W2, 7)
    (tmp_path / name).mkdir()
    found, skipped = TmpDirScanner(str(tmp_path)).scan(time.time_ns())
    assert found == []
    assert skipped == [f"{name!r} (not a regular file)"]


def test_aggregators_own_files_are_not_reported(tmp_path: Path) -> None:
    """Entries named .nvrx-aggregator* are the aggregator's own: neither found nor skipped."""
    _touch(tmp_path, ".nvrx-aggregator.lock")
    _touch(tmp_path, ".nvrx-aggregator")
    assert TmpDirScanner(str(tmp_path)).scan(time.time_ns()) == ([], [])


def test_second_scan_right_after_with_nothing_changed_returns_nothing(tmp_path: Path) -> None:
    """A rescan right after, with nothing changed, reports nothing again (neither found nor skipped)."""
    _touch(tmp_path, file_name(W1, 0))
    _touch(tmp_path, "foreign")
    scanner = TmpDirScanner(str(tmp_path))
    found, skipped = scanner.scan(time.time_ns())
    assert len(found) == 1
    assert len(skipped) == 1
    assert scanner.scan(time.time_ns()) == ([], [])


def test_new_file_is_found_on_the_next_scan(tmp_path: Path) -> None:
    """A file created after a scan is found by the next one, and only it."""
    _touch(tmp_path, file_name(W1, 0))
    scanner = TmpDirScanner(str(tmp_path))
    assert len(scanner.scan(time.time_ns())[0]) == 1
    _touch(tmp_path, file_name(W1, 1))
    assert scanner.scan(time.time_ns()) == ([FoundFile(W1, 1, file_name(W1, 1))], [])


def test_unchanged_dir_is_not_listed_within_a_second_but_force_lists_it(tmp_path: Path) -> None:
    """An old, unchanged dir is not relisted within a second; force relists it and gives only new files."""
    _touch(tmp_path, file_name(W1, 0))
    base = time.time_ns() - 10_000_000_000
    _set_dir_mtime(tmp_path, base)
    scanner = TmpDirScanner(str(tmp_path))
    now = base + 5_000_000_000
    assert scanner.scan(now) == ([FoundFile(W1, 0, file_name(W1, 0))], [])
    # A file appears but the directory's mtime is made to look unchanged.
    _touch(tmp_path, file_name(W1, 1))
    _set_dir_mtime(tmp_path, base)
    assert scanner.scan(now + 100_000_000) == ([], [])
    # force lists anyway, and gives only what was not seen before.
    assert scanner.scan(now + 200_000_000, force=True) == ([FoundFile(W1, 1, file_name(W1, 1))], [])
    assert scanner.scan(now + 300_000_000, force=True) == ([], [])


def test_unchanged_dir_is_listed_again_after_a_second(tmp_path: Path) -> None:
    """Even with the dir's mtime unchanged, a scan a second or more after the last one lists it."""
    _touch(tmp_path, file_name(W1, 0))
    base = time.time_ns() - 10_000_000_000
    _set_dir_mtime(tmp_path, base)
    scanner = TmpDirScanner(str(tmp_path))
    now = base + 5_000_000_000
    scanner.scan(now)
    _touch(tmp_path, file_name(W1, 1))
    _set_dir_mtime(tmp_path, base)
    assert scanner.scan(now + 1_000_000_000) == ([FoundFile(W1, 1, file_name(W1, 1))], [])


def test_force_returns_only_files_not_seen_before(tmp_path: Path) -> None:
    """force=True relists right away but reports only files not seen before."""
    _touch(tmp_path, file_name(W1, 0))
    scanner = TmpDirScanner(str(tmp_path))
    assert len(scanner.scan(time.time_ns())[0]) == 1
    assert scanner.scan(time.time_ns(), force=True) == ([], [])
    _touch(tmp_path, file_name(W2, 5))
    assert scanner.scan(time.time_ns(), force=True) == ([FoundFile(W2, 5, file_name(W2, 5))], [])


def test_file_deleted_and_recreated_between_listings_is_found_again(tmp_path: Path) -> None:
    """A name gone at one listing is forgotten, so its reappearance is reported as new."""
    name = file_name(W1, 0)
    _touch(tmp_path, name)
    scanner = TmpDirScanner(str(tmp_path))
    assert len(scanner.scan(time.time_ns(), force=True)[0]) == 1
    os.unlink(tmp_path / name)
    assert scanner.scan(time.time_ns(), force=True) == ([], [])
    _touch(tmp_path, name)
    assert scanner.scan(time.time_ns(), force=True) == ([FoundFile(W1, 0, name)], [])


def test_missing_dir_raises(tmp_path: Path) -> None:
    """Scanning a tmpdir that does not exist raises OSError."""
    with pytest.raises(OSError):
        TmpDirScanner(str(tmp_path / "gone")).scan(time.time_ns())
