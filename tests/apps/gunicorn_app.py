"""WSGI app for the multi-process acceptance test (tests/test_multiprocess_e2e.py).

Run as ``gunicorn --preload -w 4 gunicorn_app:app``, as a production app would be: the master
imports this module, calls ``e6observe.instrument()`` (options from ``E6OBSERVE_*`` and
``PROMETHEUS_MULTIPROC_DIR``) and warms the connector up with one query, then forks the workers.
Each worker opens its own connection on first use.

``GET /query?hold=S`` runs ``SELECT 1`` through the real connector against the simulator named by
``E6_SIM_HOST`` / ``E6_SIM_PORT``, keeps the worker busy ``S`` seconds (so concurrent requests
spread over the workers), and answers JSON: this worker's pid, the rows, and what its own
recorder counted (active strategy, switches).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable
from urllib.parse import parse_qs

from e6data_python_connector import e6data_grpc

import e6observe

HOST = os.environ["E6_SIM_HOST"]
PORT = int(os.environ["E6_SIM_PORT"])
USER = "tester@example.com"
PASSWORD = "sim-password"

RECORDER = e6observe.instrument()


def _connect() -> Any:
    return e6data_grpc.Connection(host=HOST, port=PORT, username=USER, password=PASSWORD)


def _select_one(conn: Any) -> Any:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    rows = cur.fetchall()
    cur.clear()
    return rows


# Warm-up in the master: the connector learns its strategy before the fork, as an app that
# touches the database at import time would. Closed again: channels are not shared with workers.
_warm = _connect()
_select_one(_warm)
_warm.close()

_conn: dict[int, Any] = {}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    if path != "/query":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    q = parse_qs(environ.get("QUERY_STRING", ""))
    hold = min(float(q.get("hold", ["0"])[0]), 2.0)
    pid = os.getpid()
    out: dict[str, Any] = {"pid": pid}
    status = "200 OK"
    try:
        conn = _conn.get(pid)
        if conn is None:
            conn = _conn[pid] = _connect()
        out["rows"] = _select_one(conn)
    except Exception as exc:  # reported to the test, which retries
        status = "500 Internal Server Error"
        out["error"] = type(exc).__name__
        _conn.pop(pid, None)
    if hold > 0:
        time.sleep(hold)
    rec = e6observe.get_recorder()
    out["active"] = rec.active if rec is not None else None
    out["switches"] = rec.switch_total() if rec is not None else None
    body = json.dumps(out).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
