"""Instructions per async query on the event-loop thread, counted by callgrind (issue 17).

    .venv/bin/python benchmarks/aio_instructions.py bare,e6o seq 20 100 [--repeat 3]
    ROWS=10000 .venv/bin/python benchmarks/aio_instructions.py bare,e6o fm 1 3

Wall and CPU time on the 2-core machine move by a few % between identical processes; the
instruction count of the querying thread moves much less, so decisions about the async hot path
are made on it. For each configuration a worker process runs under ``valgrind --tool=callgrind
--separate-threads=yes`` twice, with K1 and K2 queries; the event-loop thread's difference
divided by the extra queries is the instructions per query (the start-up, the connections and
the imports cancel out). The simulator runs in its own process, outside valgrind.
``PYTHONHASHSEED=0``: string hashes decide dict probe lengths, and with a random seed the
start-up alone moves by more than a million instructions between runs.

Scenarios (``SELECT 1`` unless said): ``seq`` one task, one connection, a new cursor per query;
``c4`` 4 tasks on their own connections; ``pool4`` 4 tasks sharing a 4-connection
``AsyncConnectionPool``; ``fm`` / ``fa`` one connection, ``SELECT * FROM wide LIMIT $ROWS``
read with a ``fetchmany(1000)`` loop / ``fetchall()``. Not 64 tasks: with more tasks than the
connector's 4 process-wide decode slots its ``reserve_work`` polls (``asyncio.sleep(0.005)``
until a slot is free, ~26 polls per query at 64 tasks), so the count there depends on timing,
and under valgrind the polling dominates it.

Configurations: ``bare`` (no e6observe) and ``e6o`` (``instrument(otel=False)``, no endpoint).
What is left of the run-to-run spread (about ±10 k instructions of a 3 000 k query, from type
method-cache misses whose pattern depends on thread interleaving) shows between ``--repeat``s;
``--sans-mro`` also prints each figure without ``find_name_in_mro`` (those misses).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = {"seq": 1, "c4": 4, "pool4": 4, "fm": 1, "fa": 1}


def _worker(cfg: str, scenario: str, port: int, k: int) -> None:
    """One process: ``k`` queries (per task) of ``scenario``, then exit without tear-down."""
    import asyncio

    from e6data_python_connector import aio

    if cfg != "bare":
        import e6observe

        e6observe.instrument(otel=False, watcher_interval=1.0, prometheus_port=None)  # type: ignore[operator]
    user, password, host = "bench@example.com", "x", "127.0.0.1"
    rows = int(os.environ.get("ROWS", "10000"))

    async def query(cur: Any) -> None:
        await cur.execute("SELECT 1")
        await cur.fetchall()
        await cur.close()

    async def main() -> None:
        if scenario in ("seq", "c4"):
            conns = [
                await aio.connect(host=host, port=port, username=user, password=password)
                for _ in range(SCENARIOS[scenario])
            ]

            async def own(c: Any) -> None:
                for _ in range(k):
                    await query(c.cursor())

            await asyncio.gather(*(own(c) for c in conns))
        elif scenario == "pool4":
            pool = aio.AsyncConnectionPool(
                min_size=4, max_size=4, max_overflow=0, host=host, port=port, username=user, password=password
            )
            await pool.open()

            async def leased() -> None:
                for _ in range(k):
                    lease = await pool.get_connection()
                    try:
                        await query(lease.cursor())
                    finally:
                        await pool.return_connection(lease)

            await asyncio.gather(*(leased() for _ in range(4)))
        else:
            c = await aio.connect(host=host, port=port, username=user, password=password)
            for _ in range(k):
                cur = c.cursor()
                await cur.execute(f"SELECT * FROM wide LIMIT {rows}")
                got = 0
                if scenario == "fa":
                    got = len(await cur.fetchall())
                else:
                    while True:
                        part = await cur.fetchmany(1000)
                        if not part:
                            break
                        got += len(part)
                await cur.close()
                if got != rows:
                    raise SystemExit(f"fetched {got} rows, expected {rows}")
        os._exit(0)  # no tear-down: it would be counted with the K2 run's extra queries only

    asyncio.run(main())


def _ir(out: str, fn_only: bool = False) -> int:
    """Instructions of the first thread (the event loop) in a callgrind output, or with
    ``fn_only`` the inclusive instructions of ``find_name_in_mro`` in it."""
    if not fn_only:
        with open(out + "-01") as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise SystemExit(f"no totals in {out}-01")
    ann = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out + "-01"],
        capture_output=True,
        text=True,
    ).stdout
    total = 0
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S+:find_name_in_mro\s", line)
        if m:
            total += int(m.group(1).replace(",", ""))
    return total


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", help="comma-separated: bare, e6o")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("k1", type=int)
    ap.add_argument("k2", type=int)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sans-mro", action="store_true", help="also print without find_name_in_mro")
    ap.add_argument("--keep", help="directory for the callgrind outputs (default: a temporary one)")
    a = ap.parse_args()
    if a.k2 <= a.k1:
        ap.error("k2 must be larger than k1")
    sim = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "simproc.py"), "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sim.stdin is not None and sim.stdout is not None
    port = json.loads(sim.stdout.readline())["port"]
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
    outdir = a.keep or tempfile.mkdtemp(prefix="e6o-aio-cg-")
    env = dict(os.environ, PYTHONHASHSEED="0")
    extra = (a.k2 - a.k1) * SCENARIOS[a.scenario]
    base = None
    try:
        for r in range(a.repeat):
            for cfg in a.configs.split(","):
                got = []
                for k in (a.k1, a.k2):
                    out = os.path.join(outdir, f"cg.{cfg}.{a.scenario}.{k}.{r}.out")
                    subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            "--separate-threads=yes",
                            f"--callgrind-out-file={out}",
                            sys.executable,
                            os.path.abspath(__file__),
                            "--worker",
                            cfg,
                            a.scenario,
                            str(port),
                            str(k),
                        ],
                        capture_output=True,
                        env=env,
                        check=False,
                    )
                    got.append((_ir(out), _ir(out, True) if a.sans_mro else 0))
                per = (got[1][0] - got[0][0]) / extra
                if base is None:
                    base = per
                line = f"{cfg:6s} {a.scenario:6s} {per / 1e3:9.1f} kIr/query ({(per - base) / 1e3:+7.1f} k)"
                if a.sans_mro:
                    sans = ((got[1][0] - got[1][1]) - (got[0][0] - got[0][1])) / extra
                    line += f"  sans-mro {sans / 1e3:9.1f}"
                print(line, flush=True)
    finally:
        sim.stdin.write('{"cmd": "quit"}\n')
        sim.stdin.flush()
        sim.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
