"""Run under ``opentelemetry-instrument``: spawned children and the connector's decode workers.

* a v2-result query makes the connector spawn its result-decode workers: they must stay inert
  (no /metrics server, no watcher) - a worker that instrumented itself would try to bind
  E6OBSERVE_PROMETHEUS_PORT too and log that it cannot;
* an application's own spawned child (``multiprocessing`` spawn) is instrumented as usual.

Prints one JSON line.
"""

from __future__ import annotations

import json
import multiprocessing


def child(q: multiprocessing.Queue[bool]) -> None:
    import e6observe

    q.put(e6observe.is_instrumented())


def main() -> dict:
    from e6data_python_connector import Connection

    import e6observe
    from e6observe.sim import Simulator

    out: dict = {"parent_instrumented": e6observe.is_instrumented()}
    with Simulator() as sim:
        conn = Connection(
            host=sim.host,
            port=sim.port,
            username="app@example.com",
            password="pw",
            enable_result_batch_v2=True,
        )
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM sample")
        out["rows"] = cur.fetchall()
        cur.clear()
        conn.close()
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,), name="app-worker")
    p.start()
    out["child_instrumented"] = q.get(timeout=60)
    p.join(30)
    rec = e6observe.get_recorder()
    if rec is not None:
        from e6observe import metrics as M

        out["v2_rpcs"] = sum(
            h.count for k, h in rec.family(M.RPC_DURATION).items() if k[0] == "getNextResultBatchV2"
        )
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
