"""Instructions per sync query, by mode: a measure of the hot path that load does not move.

    .venv/bin/python benchmarks/instructions.py [--modes bare,e6o-prom,e6o-full,e6o-mp]
        [--queries 400] [--reps 2] [--out FILE.json]
    .venv/bin/python benchmarks/instructions.py --query fetchmany --rows 20000 --queries 3 \
        --modes bare,e6o-full        # the large-result path, per query of 20 000 rows

Timings on a small shared machine move by a few percent between two identical processes (the
harness's A/A control shows it), so a change of one percent to the hot path cannot be read from
them. This counts instead, with valgrind's callgrind, the machine instructions the querying
thread executes: each mode (the harness's own set-ups, ``modes.py``) runs in a worker under
``valgrind --tool=callgrind --separate-threads=yes`` twice, once with a few queries and once with
``--queries`` more; the main thread's difference divided by the difference in queries is the
instructions per query, set-up and start-up cancelled out. Background threads (the watcher, the
exporters, gRPC's own) are left out: what is counted is what delays the application's call.

A query is the harness's: ``execute("SELECT 1")``, ``fetchall()``, ``clear()`` on a reused
cursor (six RPCs); with ``--query fetchmany`` or ``--query fetchall`` it is the large-result
path's ``SELECT * FROM wide LIMIT <rows>`` (10 columns), fetched by a ``fetchmany(1000)`` loop or
one ``fetchall()``, after one such query as the "few". Every worker runs with the same
``PYTHONHASHSEED`` (0 unless set), so dict lookups collide alike; what still varies run to run
(gRPC's polling and the connector's time-based checks depend on how long a call takes, and
valgrind slows everything ~50x) is covered by ``--reps`` runs per mode, interleaved with the
others; the median is reported.

Needs ``valgrind`` (``apt-get install valgrind``); the simulator runs outside valgrind.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
FEW = 50


def _worker(mode: str, port: int, n: int, query: str, rows: int) -> None:
    sys.path.insert(0, HERE)
    import e6data_python_connector.e6data_grpc as g
    from modes import Mode

    Mode(mode).install()
    conn = g.Connection(host="127.0.0.1", port=port, username="bench@example.com", password="bench-password")
    cur = conn.cursor()
    if query == "select1":
        for _ in range(n):
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()
    else:
        sql = f"SELECT * FROM wide LIMIT {rows}"
        for _ in range(n):
            cur.execute(sql)
            got = 0
            if query == "fetchall":
                got = len(cur.fetchall())
            else:
                while True:
                    part = cur.fetchmany(1000)
                    if not part:
                        break
                    got += len(part)
            cur.clear()
            if got != rows:
                raise SystemExit(f"fetched {got} rows, expected {rows}")
    os._exit(0)  # no teardown: it is not a query's cost


def _main_thread_instructions(out_prefix: str) -> int:
    """Instructions of the first thread (the querying one) in a callgrind run's files."""
    files = sorted(glob.glob(out_prefix + "-*"))
    if not files:
        raise RuntimeError(f"callgrind wrote no file at {out_prefix}-*")
    with open(files[0]) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {files[0]}")


def _count(mode: str, port: int, n: int, workdir: str, env: dict[str, str], query: str, rows: int) -> int:
    prefix = os.path.join(workdir, f"cg.{mode}.{n}.{len(os.listdir(workdir))}")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={prefix}",
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        str(port),
        str(n),
        query,
        str(rows),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{mode}: valgrind exited {p.returncode}: {p.stderr[-2000:]}")
    return _main_thread_instructions(prefix)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="bare,e6o-prom,e6o-full,e6o-mp")
    ap.add_argument("--queries", type=int, default=400, help="queries counted beyond the first few")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--query", choices=("select1", "fetchmany", "fetchall"), default="select1")
    ap.add_argument("--rows", type=int, default=20000, help="rows per large query (fetchmany, fetchall)")
    ap.add_argument(
        "--worker", nargs=5, metavar=("MODE", "PORT", "N", "QUERY", "ROWS"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.worker:
        _worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), a.worker[3], int(a.worker[4]))
        return 0
    few_queries = FEW if a.query == "select1" else 1
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if "bare" not in modes:
        modes.insert(0, "bare")
    sim = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "simproc.py"), "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    recv = None
    # One hash seed for every worker: dict and type-cache lookups then collide the same way in
    # each (with random seeds two bare runs differ by ~1 %, mostly in dict lookups).
    env = dict(os.environ, PYTHONHASHSEED=os.environ.get("PYTHONHASHSEED", "0"))
    try:
        port = json.loads(sim.stdout.readline())["port"]  # type: ignore[union-attr]
        sys.path.insert(0, HERE)
        from modes import OTLP_MODES

        if any(m in OTLP_MODES for m in modes):
            recv = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "otlprecv.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            recv_port = json.loads(recv.stdout.readline())["port"]  # type: ignore[union-attr]
            env["E6O_BENCH_OTLP"] = f"127.0.0.1:{recv_port}"
        per_query: dict[str, list[float]] = {m: [] for m in modes}
        with tempfile.TemporaryDirectory(prefix="e6o-instr-") as workdir:
            for rep in range(a.reps):
                for m in modes if rep % 2 == 0 else modes[::-1]:
                    few = _count(m, port, few_queries, workdir, env, a.query, a.rows)
                    many = _count(m, port, few_queries + a.queries, workdir, env, a.query, a.rows)
                    per_query[m].append((many - few) / a.queries)
                    k = per_query[m][-1] / 1e3
                    print(f"  rep {rep + 1}: {m:<16} {k:8.1f} k instructions/query", flush=True)
        bare = statistics.median(per_query["bare"])
        result: dict[str, Any] = {
            "query": a.query,
            "rows": a.rows if a.query != "select1" else 1,
            "queries": a.queries,
            "reps": a.reps,
            "modes": {},
        }
        print(f"{'mode':<16} {'k instr/query':>14} {'added':>10} {'added %':>8}  [runs]")
        for m in modes:
            med = statistics.median(per_query[m])
            added = med - bare
            result["modes"][m] = {
                "instructions_per_query": med,
                "runs": per_query[m],
                "added_instructions": added,
                "added_pct": 100.0 * added / bare,
            }
            runs = ", ".join(f"{x / 1e3:.0f}" for x in per_query[m])
            print(f"{m:<16} {med / 1e3:14.1f} {added / 1e3:+9.1f}k {100.0 * added / bare:+7.2f}%  [{runs}]")
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
        return 0
    finally:
        for p in (sim, recv):
            if p is not None:
                try:
                    p.stdin.write('{"cmd": "quit"}\n')  # type: ignore[union-attr]
                    p.stdin.flush()  # type: ignore[union-attr]
                except Exception:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    sys.exit(main())
