"""Where the querying thread's time goes, per query and mode: user and system CPU, page faults,
context switches (from ``/proc``; Linux only).

    .venv/bin/python benchmarks/threadtime.py [--modes bare,e6o-prom] [--seconds 8] [--reps 2]

Each mode runs in a fresh process (the harness's set-up, ``modes.py``) against its own simulator
process (pinned as the harness pins them with 2+ CPUs: the simulator to the first allowed CPU,
the worker and all its threads to the second), warms up, then runs ``SELECT 1`` queries
(``execute``, ``fetchall``, ``clear``) for ``--seconds``; the querying thread's counters are
read before and after. Read beside the callgrind count (``instructions.py``): it shows how much
of the added CPU time the added instructions account for. The user/system split is tick-sampled
by the kernel (coarse for a few microseconds per query); their sum, the faults and the switches
are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _task_counters(tid: int) -> dict[str, int]:
    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    out = {"minflt": int(fields[7]), "utime": int(fields[11]), "stime": int(fields[12])}
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                k, v = line.split(":")
                out[k.strip()] = int(v)
    return out


def _worker(mode: str, seconds: float) -> None:
    sys.path.insert(0, HERE)
    from simstart import start_pinned

    sim, port, _ = start_pinned()
    try:
        import e6data_python_connector.e6data_grpc as g

        if mode != "bare":
            from modes import Mode

            Mode(mode).install()
        cur = g.Connection(host="127.0.0.1", port=port, username="tt@example.com", password="x").cursor()

        def query() -> None:
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()

        for _ in range(500):
            query()
        tid = threading.get_native_id()
        a = _task_counters(tid)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            query()
            n += 1
        b = _task_counters(tid)
        tick = os.sysconf("SC_CLK_TCK")
        per = {k: (b[k] - a[k]) / n for k in a}
        print(
            json.dumps(
                {
                    "mode": mode,
                    "queries": n,
                    "user_us": per["utime"] * 1e6 / tick,
                    "system_us": per["stime"] * 1e6 / tick,
                    "minor_faults": per["minflt"],
                    "voluntary_switches": per["voluntary_ctxt_switches"],
                    "involuntary_switches": per["nonvoluntary_ctxt_switches"],
                }
            ),
            flush=True,
        )
    finally:
        sim.kill()
    os._exit(0)  # the worker's threads need no tear-down


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], float(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="bare,e6o-prom")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    head = ("mode", "queries", "user µs", "sys µs", "faults", "vol cs", "invol")
    print("{:12s} {:>8s} {:>8s} {:>7s} {:>7s} {:>7s} {:>6s}".format(*head))
    for _ in range(a.reps):
        for m in modes:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--worker", m, str(a.seconds)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=a.seconds + 120,
            ).stdout
            r: Any = json.loads(out.strip().splitlines()[-1])
            print(
                f"{m:12s} {r['queries']:8d} {r['user_us']:8.1f} {r['system_us']:7.1f} "
                f"{r['minor_faults']:7.3f} {r['voluntary_switches']:7.2f} {r['involuntary_switches']:6.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
