"""Files of writers that are gone are deleted soon, even on a node that has gone quiet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import node_env, parse_text_records, wait_for

from nvrxlog import NodeAggregator
from nvrxlog.core.record import parse_file_name
from nvrxlog.node.output import checkpoint_due

# A data-loader-style parent: forks children that each log one line and exit, then idles until stdin closes.
_FORKER = """
import os, sys
from nvrxlog import setup_logger
log = setup_logger()
log.info("parent up")
children = []
for k in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        log.info("child %d", k)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print("forked", flush=True)
sys.stdin.read()
"""


def test_checkpoint_due_at_the_drain_or_when_something_is_unsaved_past_the_interval() -> None:
    """checkpoint_due: always when final; otherwise only with something unsaved and the interval passed."""
    assert checkpoint_due(final=True, unsaved=False, since_ns=0, interval_ns=100)
    assert checkpoint_due(final=False, unsaved=True, since_ns=100, interval_ns=100)
    assert not checkpoint_due(final=False, unsaved=True, since_ns=99, interval_ns=100)
    assert not checkpoint_due(final=False, unsaved=False, since_ns=10**12, interval_ns=100)


def test_checkpoint_is_never_due_while_written_records_wait_for_the_spool() -> None:
    """checkpoint_due with spooling: not even the final drain checkpoints past records the spool has not taken."""
    assert not checkpoint_due(final=True, unsaved=True, since_ns=10**12, interval_ns=100, spooling=True)
    assert not checkpoint_due(final=False, unsaved=True, since_ns=10**12, interval_ns=100, spooling=True)


@pytest.mark.timeout(120)
def test_files_of_fifty_forked_children_are_deleted_while_the_node_is_idle(tmp_path: Path) -> None:
    """50 children log a line and exit, then nothing logs: their temp files are gone soon, their lines written."""
    tmp = tmp_path / "tmp"
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "node001"):
        parent = subprocess.Popen(
            [sys.executable, "-c", _FORKER, "50"],
            env=node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert parent.stdout.readline() == "forked\n"

            def children_files() -> list[str]:
                names = [(n, parse_file_name(n)) for n in (p.name for p in tmp.iterdir())]
                return [n for n, parsed in names if parsed is not None and parsed[0].pid != parent.pid]

            wait_for(lambda: not children_files(), timeout=15, what="the children's temp files to be deleted")
            out = tmp_path / "logs" / "nvrx_log_node001.log"
            msgs = sorted(r["msg"] for r in parse_text_records(out))
            assert msgs == sorted(["parent up", *(f"child {k}" for k in range(50))])
        finally:
            parent.stdin.close()
            parent.wait(timeout=30)
