"""Multi-process mode: the scrape that merges N workers' state files, and a worker's write cost.

    .venv/bin/python benchmarks/multiproc.py [--workers 32] [--queries 200] [--json out.json]

``--workers`` real worker processes (each: the connector, ``e6observe.instrument(otel=False,
multiprocess_dir=D)``, ``--queries`` queries against one simulator, a graceful blue -> green
switch half-way so every file carries both colours and a switch) stay alive holding their locks,
as gunicorn workers do. Then, in this process, which plays the worker serving /metrics:

* **cold merge** - a fresh ``MultiProcessCollector`` renders the exposition (every file read and
  parsed): the first scrape after a start;
* **warm merge** - the same collector again, nothing changed (one ``stat`` per file);
* **changed merge** - every worker has run one more query and flushed: every file re-read.

Each worker also times its own ``ProcessStateWriter.write()`` after a query changed its state
(the write cost per flush: JSON of the recorder state, temp file, ``os.replace``).

Target (issue 17): the merge of 32 workers' files under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from stats import spread  # noqa: E402

CHILD = r"""
import json, os, sys, time
d, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from e6data_python_connector import e6data_grpc
import e6observe
e6observe.instrument(otel=False, multiprocess_dir=d, watcher_interval=3600)
from e6observe import _api
sink = next(o for c, o, _ in _api._active.sinks if c == "sink.prometheus")
w = sink.writer
conn = e6data_grpc.Connection(host="127.0.0.1", port=port, username="mp@example.com", password="x")
cur = conn.cursor()
def q():
    cur.execute("SELECT 1"); cur.fetchall(); cur.clear()
for _ in range(n):
    q()
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "more":
        for _ in range(n):
            q()
        print(json.dumps({"ok": 1}), flush=True)
    elif cmd == "write":
        times = []
        for _ in range(20):
            q()
            t = time.perf_counter_ns(); wrote = w.write(); times.append(time.perf_counter_ns() - t)
        q()
        w.flush()
        size = os.path.getsize(w.path)
        print(json.dumps({"write_ns": times, "bytes": size}), flush=True)
    elif cmd == "quit":
        break
e6observe.uninstrument()
"""


def scrape_ms(collector: Any, reps: int) -> tuple[list[float], int]:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    out = []
    body = b""
    for _ in range(reps):
        t = time.perf_counter_ns()
        body = generate_latest(reg)
        out.append((time.perf_counter_ns() - t) / 1e6)
    reg.unregister(collector)
    series = sum(1 for ln in body.decode().splitlines() if ln and not ln.startswith("#"))
    return out, series


def run(workers: int, queries: int) -> dict[str, Any]:
    from e6observe.sim import Simulator
    from e6observe.sinks.multiprocess import MultiProcessCollector

    d = tempfile.mkdtemp(prefix="e6o-mp-bench-")
    sim = Simulator(port=0).start()
    procs: list[subprocess.Popen[str]] = []
    try:
        half = workers // 2
        for i in range(workers):
            if i == half:
                sim.flip()  # the second half of the workers meets a graceful switch
            p = subprocess.Popen(
                [sys.executable, "-c", CHILD, d, str(sim.port), str(queries)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=dict(os.environ, PYTHONHASHSEED="0"),
            )
            procs.append(p)
            if len(procs) % 8 == 0 or i == workers - 1:  # at most 8 starting at once
                for pp in procs[-8:]:
                    assert pp.stdout is not None
                    line = pp.stdout.readline()
                    if not line:
                        raise RuntimeError(f"a worker exited (rc={pp.poll()})")
        files = sorted(f for f in os.listdir(d) if f.endswith(".json"))
        cold_all = []
        series = 0
        for _ in range(5):  # a fresh collector each time: every file parsed
            t, series = scrape_ms(MultiProcessCollector(d), 1)
            cold_all.extend(t)
        coll = MultiProcessCollector(d)
        scrape_ms(coll, 1)
        warm, _ = scrape_ms(coll, 20)
        changed = []
        for _ in range(3):
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write("more\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout is not None
                p.stdout.readline()
            t, _ = scrape_ms(coll, 1)
            changed.extend(t)
        writes: list[float] = []
        sizes = []
        for p in procs[:8]:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("write\n")
            p.stdin.flush()
            r = json.loads(p.stdout.readline())
            writes.extend(x / 1e6 for x in r["write_ns"])
            sizes.append(r["bytes"])
        return {
            "workers": workers,
            "queries_per_worker": queries,
            "state_files": len(files),
            "series_in_merged_scrape": series,
            "cold_merge_ms": spread(cold_all),
            "warm_merge_ms": spread(warm),
            "changed_merge_ms": spread(changed),
            "write_ms": spread(writes),
            "state_file_bytes": spread([float(s) for s in sizes]),
        }
    finally:
        for p in procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except Exception:
                pass
        for p in procs:
            try:
                p.wait(10)
            except Exception:
                p.kill()
        sim.stop()
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json")
    a = ap.parse_args()
    r = run(a.workers, a.queries)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    for k in ("cold_merge_ms", "warm_merge_ms", "changed_merge_ms", "write_ms"):
        s = r[k]
        print(f"{k:<17} median {s['median']:7.2f}  [{s['min']:.2f}-{s['max']:.2f}]  n={s['n']}")
    print(
        f"{r['state_files']} state files, {r['series_in_merged_scrape']} series in the merged "
        f"scrape, state file ~{r['state_file_bytes']['median']:.0f} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
