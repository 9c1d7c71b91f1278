"""An application that never mentions e6observe's instrument(): run it under
``opentelemetry-instrument python tests/apps/otel_workload.py``.

It uses the connector against the simulator (one announced and one abrupt switch), then
reports, as one JSON line, what e6observe saw: from the live recorder if any, and from
/metrics when E6OBSERVE_PROMETHEUS_PORT is set.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

from e6data_python_connector import Connection

from e6observe.sim import Simulator


def query(conn: Connection, sql: str = "SELECT 1") -> list:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


def main() -> dict:
    with Simulator() as sim:
        conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
        rows = query(conn)
        sim.announce()
        rows += query(conn)  # learns of the announcement
        rows += query(conn)  # drained: applies green
        sim.complete()
        sim.flip(announce=False)  # abrupt back to blue
        rows += query(conn, "SELECT 2")
        conn.close()
        counters = sim.counters()
    out: dict = {
        "rows": rows,
        "sim_mismatches": counters["mismatches_total"],
        "sim_active": counters["active"],
    }
    import e6observe  # only to read what was recorded; instrumentation came from the entry point

    out["instrumented"] = e6observe.is_instrumented()
    rec = e6observe.get_recorder()
    if rec is not None:
        from e6observe import metrics as M

        out["switches"] = {"|".join(k): c.value for k, c in rec.family(M.SWITCHES).items() if c.value}
        out["mismatches"] = sum(c.value for _, c in rec.family(M.MISMATCHES).items())
        out["active"] = rec.active
        out["rpc_strategies"] = sorted({k[1] for k, h in rec.family(M.RPC_DURATION).items() if h.count})
    port = os.environ.get("E6OBSERVE_PROMETHEUS_PORT")
    if port and out["instrumented"]:
        deadline = time.monotonic() + 5
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    out["metrics"] = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
