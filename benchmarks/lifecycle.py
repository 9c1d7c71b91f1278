"""Wall time of ``instrument()`` and ``uninstrument()`` with the endpoint running.

    .venv/bin/python benchmarks/lifecycle.py [--rounds 10] [--no-status]

Each round instruments with ``prometheus_port=0`` (the endpoint, the status page and /events
on it), scrapes /metrics once (so the server has served a request), opens one /events stream
(unless ``--no-status``), then uninstruments. Prints the median and the worst of each call, in
milliseconds. Target (issue 16, item 7): ``uninstrument()`` under 50 ms.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import sys
import time
import urllib.request

import e6observe
from e6observe import _api


def one_round(stream: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    e6observe.instrument(prometheus_port=0, otel=False)
    t1 = time.perf_counter()
    inst = _api._active
    srv = next(obj.server for c, obj, _ in inst.sinks if c == "sink.prometheus")  # type: ignore[union-attr]
    urllib.request.urlopen(srv.url + "/metrics", timeout=5).read()
    sock = None
    if stream:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        sock.sendall(b"GET /events HTTP/1.0\r\nHost: x\r\n\r\n")
        sock.recv(4096)  # the stream's headers: it is open
    t2 = time.perf_counter()
    e6observe.uninstrument()
    t3 = time.perf_counter()
    if sock is not None:
        sock.close()
    return (t1 - t0) * 1000, (t3 - t2) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-status", action="store_true", help="no open /events stream")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    one_round(not args.no_status)  # imports, first-time costs
    ins, unins = [], []
    for _ in range(args.rounds):
        a, b = one_round(not args.no_status)
        ins.append(a)
        unins.append(b)
    for name, xs in (("instrument()", ins), ("uninstrument()", unins)):
        print(f"{name:16s} median {statistics.median(xs):7.1f} ms   worst {max(xs):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
