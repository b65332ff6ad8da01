"""The soak's simulated nodes: one process, a ``Forwarder`` per node, steady and short-lived writers.

``python _soak_nodes.py ENDPOINT ROOT NODES SECONDS RATE SHORT`` forwards, for
SECONDS, RATE records a second per node from one steady writer, and SHORT
writers in all that each write one record and end. Prints what each node
sent, as JSON, once every forwarder is drained.
"""

from __future__ import annotations

import os
import sys
import time

import orjson

from nvrxlog.wire.forwarder import Forwarder

_TICK = 0.1


def _record(seq: int, msg: str, writer: str, node: int) -> dict:
    return {
        "seq": seq,
        "ts": time.time_ns(),
        "level": "INFO",
        "rank": node,
        "local_rank": 0,
        "infra_rank": None,
        "infra_local_rank": None,
        "pid": os.getpid(),
        "file": "soak.py",
        "line": 1,
        "msg": msg,
        "w": writer,
    }


def main() -> None:
    endpoint, root, nodes, seconds, rate, short = sys.argv[1:7]
    nodes, seconds, rate, short = int(nodes), float(seconds), float(rate), int(short)
    forwarders = [
        Forwarder(endpoint, f"soak{n}", os.path.join(root, f"spool{n}"), warn_after=600).start() for n in range(nodes)
    ]
    steady = [0] * nodes
    shorts = [0] * nodes
    ticks = int(seconds / _TICK)
    per_tick = max(1, round(rate * _TICK))
    short_total = 0
    start = time.monotonic()
    for tick in range(ticks):
        due = short * (tick + 1) // ticks  # short-lived writers spread evenly over the run, round robin
        new, short_total = range(short_total, due), due
        for n, forwarder in enumerate(forwarders):
            records = [_record(steady[n] + i, f"steady {steady[n] + i}", "steady", n) for i in range(per_tick)]
            steady[n] += per_tick
            mine = new[n::nodes]
            records += [_record(0, f"short {k}", f"short.{k}", n) for k in mine]
            shorts[n] += len(mine)
            # A short-lived writer's one record is its last: said, as a node's aggregator says it.
            forwarder.submit(records, records[-1]["ts"], [f"short.{k}" for k in mine])
        time.sleep(max(0.0, start + (tick + 1) * _TICK - time.monotonic()))
    undelivered = sum(forwarder.stop(120) for forwarder in forwarders)
    print(orjson.dumps({"steady": steady, "short": shorts, "undelivered": undelivered}).decode(), flush=True)


if __name__ == "__main__":
    main()
