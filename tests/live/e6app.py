"""An instrumented application for the live Prometheus/Alertmanager test.

    python tests/live/e6app.py --sim-port S --metrics-port P [--threads N] [--idle]

It instruments itself with ``e6observe.instrument(prometheus_port=P)`` and runs real connector
queries against the simulator: ``--threads`` workers issuing short queries with pauses (so the
connector's query map empties now and then and announced switches can drain), one worker
going through a ``ConnectionPool``. With ``--idle`` it runs one query (to learn the active
colour) and then nothing: a client that stays on the old colour until it is asked to query,
which is how a real idle process ends up disagreeing with its peers after a switch.

Commands on stdin, one per line; every answer is one JSON line on stdout:

* ``long``   start a ``SELECT sleep(2)`` query; answers ``{"long": "started"}`` just before
  its execute is sent, and ``{"long": "<outcome>"}`` when it ends;
* ``query``  one query now; answers ``{"query": "ok"|"error", "strategy": ...}``;
* ``state``  ``{"active": ..., "switches": ...}`` from the recorder;
* ``quit``   stop the workers, uninstrument, exit 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from typing import Any

from e6data_python_connector import e6data_grpc
from e6data_python_connector.connection_pool import ConnectionPool

import e6observe

USER = "live@example.com"
PASSWORD = "live-password"
_out_lock = threading.Lock()


def say(**fields: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def one_query(conn: Any, sql: str) -> str:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        cur.fetchall()
        return "ok"
    except Exception:
        return "error"
    finally:
        try:
            cur.clear()
        except Exception:
            pass
        try:
            cur.close()
        except Exception:
            pass


def connect(args: argparse.Namespace, user: str) -> Any:
    return e6data_grpc.Connection(host="127.0.0.1", port=args.sim_port, username=user, password=PASSWORD)


def worker(args: argparse.Namespace, stop: threading.Event, n: int) -> None:
    conn = None
    rng = random.Random(n)
    while not stop.is_set():
        try:
            if conn is None:
                conn = connect(args, USER)
            sql = "SELECT * FROM sample LIMIT 20" if rng.random() < 0.3 else "SELECT 1"
            if one_query(conn, sql) == "error" and rng.random() < 0.5:
                conn.close()
                conn = None
        except Exception:
            conn = None
        stop.wait(rng.uniform(0.05, 0.15))


def pool_worker(args: argparse.Namespace, stop: threading.Event) -> None:
    pool = None
    try:
        pool = ConnectionPool(
            min_size=1,
            max_size=2,
            max_overflow=0,
            pre_ping=False,
            host="127.0.0.1",
            port=args.sim_port,
            username=USER,
            password=PASSWORD,
        )
        while not stop.is_set():
            try:
                with pool.get_connection_context(timeout=5) as pc:
                    cur = pc.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    cur.clear()
            except Exception:
                pass
            stop.wait(0.2)
    finally:
        if pool is not None:
            try:
                pool.close_all()
            except Exception:
                pass


def long_query(args: argparse.Namespace) -> None:
    conn = connect(args, USER)
    try:
        say(long="started")
        say(long=one_query(conn, "SELECT sleep(2)"))
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--idle", action="store_true")
    args = ap.parse_args()

    e6observe.instrument(prometheus_port=args.metrics_port, watcher_interval=0.25, otel=False)
    rec = e6observe.get_recorder()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    own = connect(args, USER)
    first = one_query(own, "SELECT 1")
    if not args.idle:
        threads = [
            threading.Thread(target=worker, args=(args, stop, i), daemon=True) for i in range(args.threads)
        ]
        threads.append(threading.Thread(target=pool_worker, args=(args, stop), daemon=True))
        for t in threads:
            t.start()
    say(ready=True, first=first, active=rec.active if rec else None)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "long":
            threading.Thread(target=long_query, args=(args,), daemon=True).start()
        elif cmd == "query":
            say(query=one_query(own, "SELECT 1"), strategy=rec.active if rec else None)
        elif cmd == "state":
            say(active=rec.active if rec else None, switches=rec.switch_total() if rec else None)
        elif cmd == "quit":
            break
    stop.set()
    for t in threads:
        t.join(timeout=5)
    try:
        own.close()
    except Exception:
        pass
    e6observe.uninstrument()
    return 0


if __name__ == "__main__":
    sys.exit(main())
