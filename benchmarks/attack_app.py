"""The application under attack for ``benchmarks/endpoint_attack.py``.

    python benchmarks/attack_app.py --sim-port S --metrics-port P [--qps 200] [--seconds 120]

Instruments itself with ``e6observe.instrument(prometheus_port=P)`` (further options from the
``E6OBSERVE_*`` environment: basic auth, TLS) and runs real connector queries against the
simulator at about ``--qps`` queries a second (4 threads, one connection each). Once a second it
prints one JSON line: ``{"t", "queries", "errors", "e456", "rss_mib", "query_map"}`` — the
queries and errors of that second, the errors whose text carries ``456``, the process's RSS, and
the size of the connector's query map. It stops by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from e6data_python_connector import e6data_grpc

import e6observe

USER = "attack@example.com"
PASSWORD = "attack-password"
THREADS = 4


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queries = self.errors = self.e456 = 0


def worker(args: argparse.Namespace, stop: threading.Event, counts: Counts, conns: list[Any]) -> None:
    conn: Any = None
    period = THREADS / max(1.0, args.qps)
    nxt = time.monotonic()
    while not stop.is_set():
        ok, e456 = True, False
        try:
            if conn is None:
                conn = e6data_grpc.Connection(
                    host="127.0.0.1", port=args.sim_port, username=USER, password=PASSWORD
                )
                conns.append(conn)
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()
        except Exception as exc:
            ok, e456 = False, "456" in str(exc)
            conn = None
        with counts.lock:
            counts.queries += ok
            counts.errors += not ok
            counts.e456 += e456
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            nxt = time.monotonic()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def query_map_size(conns: list[Any]) -> int:
    n = 0
    for c in conns:
        m = getattr(c, "_query_map", None) or getattr(c, "query_map", None)
        if isinstance(m, dict):
            n += len(m)
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--qps", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    args = ap.parse_args()
    e6observe.instrument(prometheus_port=args.metrics_port, otel=False)
    counts, stop, conns = Counts(), threading.Event(), []  # type: ignore[var-annotated]
    threads = [
        threading.Thread(target=worker, args=(args, stop, counts, conns), daemon=True) for _ in range(THREADS)
    ]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    print(json.dumps({"ready": True}), flush=True)
    try:
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            with counts.lock:
                line = {
                    "t": round(time.monotonic() - t0, 1),
                    "queries": counts.queries,
                    "errors": counts.errors,
                    "e456": counts.e456,
                }
                counts.queries = counts.errors = counts.e456 = 0
            line["rss_mib"] = round(rss_mib(), 1)
            line["query_map"] = query_map_size(conns)
            print(json.dumps(line), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        e6observe.uninstrument()
    return 0


if __name__ == "__main__":
    sys.exit(main())
