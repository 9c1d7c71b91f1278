"""Profile the instrumented query path: where does a query spend its CPU inside e6observe?

    .venv/bin/python benchmarks/profile_query.py --mode e6o-full --queries 20000            # py-spy
    .venv/bin/python benchmarks/profile_query.py --mode e6o-full --tool pyinstrument

py-spy (default) samples the query loop from outside (``py-spy record --format raw``, main
thread only, non-blocking), then this script reads the collapsed stacks and prints the
share of the query thread's samples (roughly: of its wall time, since the
thread counts as busy while gRPC waits for a reply) spent under e6observe frames, by e6observe function
(inclusive: the outermost e6observe frame on the stack) and by leaf function (self time). It
also writes an SVG flame graph next to the raw file. pyinstrument (in-process, deterministic
call tree) writes an HTML report; use it to read one call path, not to compare shares.
Output goes to benchmarks/results/profile-<mode>.* (not committed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from modes import MODES, Mode  # noqa: E402


def _start_sim() -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "simproc.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert p.stdout is not None
    return p, int(json.loads(p.stdout.readline())["port"])


def inner(mode: str, port: int, queries: int, tool: str, out: str) -> None:
    """The profiled process: set up ``mode``, warm up, run ``queries`` queries."""
    from e6data_python_connector import e6data_grpc

    m = Mode(mode)
    m.install()
    conn = e6data_grpc.Connection(
        host="127.0.0.1", port=port, username="bench@example.com", password="bench-password"
    )
    cur = conn.cursor()

    def q(n: int) -> None:  # the name is what summarise() looks for on the stack
        for _ in range(n):
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()

    q(300)
    t = time.perf_counter()
    if tool == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0001)
        prof.start()
        q(queries)
        prof.stop()
        with open(out, "w") as f:
            f.write(prof.output_html())
    else:
        q(queries)
    dt = time.perf_counter() - t
    print(f"{queries} queries in {dt:.2f} s ({1000 * dt / queries:.3f} ms/query)", file=sys.stderr)
    conn.close()
    m.uninstall()


#: Frames that count as instrumentation (the agent under test, OpenTelemetry, gRPC's generic
#: interceptor machinery); the simulator is in another process anyway.
MATCH = ("/e6observe/", "/opentelemetry/", "/grpc/_interceptor.py")
#: Frames of the work being instrumented: below an instrumentation frame they mean "the wrapped
#: call is running", so the sample is not overhead.
UNDERLYING = ("/e6data_python_connector/", "/grpc/_channel.py", "/google/protobuf/", "/thrift/")


def _is_instr(frame: str) -> bool:
    return any(m in frame for m in MATCH) and "/e6observe/sim/" not in frame


def summarise(raw_path: str, top: int = 25) -> dict[str, Any]:
    """Shares of main-thread samples spent in instrumentation code (py-spy raw output).

    A sample counts when an instrumentation frame is on the stack and nothing leafward of the
    innermost one is the wrapped work (see ``UNDERLYING``); it is attributed to the outermost
    instrumentation frame (entry point) and to its leaf frame (self time).
    """
    total = 0
    incl: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    e6o_total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n_s)
            frames = stack.split(";")
            if not frames[0].startswith("thread (") or "MainThread" not in frames[0]:
                continue
            if not any(fr.startswith("inner.<locals>.q (") for fr in frames):
                continue  # start-up and imports
            total += n
            idx = [i for i, fr in enumerate(frames) if _is_instr(fr)]
            if not idx:
                continue
            # A sample inside the wrapped call (the RPC itself, the connector's own work under
            # a wrapper) is the application's cost, not the instrumentation's.
            if any(u in fr for fr in frames[idx[-1] + 1 :] for u in UNDERLYING):
                continue
            e6o_total += n
            incl[frames[idx[0]]] += n
            leaf[frames[-1]] += n
    return {
        "busy_samples": total,
        "instrumentation_samples": e6o_total,
        "instrumentation_share_pct": 100.0 * e6o_total / total if total else 0.0,
        "inclusive_by_entry": [(k, v, round(100.0 * v / total, 2)) for k, v in incl.most_common(top)],
        "self_by_leaf": [(k, v, round(100.0 * v / total, 2)) for k, v in leaf.most_common(top)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="e6o-full", choices=MODES)
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--tool", default="py-spy", choices=("py-spy", "pyinstrument"))
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--inner-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    base = os.path.join(a.out_dir, f"profile-{a.mode}")
    if a.inner_port:
        inner(a.mode, a.inner_port, a.queries, a.tool, base + ".html")
        return 0
    sim, port = _start_sim()
    try:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--mode",
            a.mode,
            "--queries",
            str(a.queries),
            "--tool",
            a.tool,
            "--inner-port",
            str(port),
            "--out-dir",
            a.out_dir,
        ]
        if a.tool == "pyinstrument":
            subprocess.run(cmd, check=True)
            print(f"wrote {base}.html")
            return 0
        spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        subprocess.run(
            [
                spy,
                "record",
                "--format",
                "raw",
                "--threads",
                "--full-filenames",
                "--nonblocking",
                "--rate",
                str(a.rate),
                "-o",
                base + ".txt",
                "--",
                *cmd,
            ],
            check=True,
        )
        subprocess.run(
            [
                spy,
                "record",
                "--threads",
                "--nonblocking",
                "--rate",
                str(a.rate),
                "-o",
                base + ".svg",
                "--",
                *cmd[:5],
                str(max(1000, a.queries // 4)),
                *cmd[6:],
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        assert sim.stdin is not None
        sim.stdin.write('{"cmd": "quit"}\n')
        sim.stdin.flush()
        sim.wait(10)
    s = summarise(base + ".txt")
    with open(base + ".json", "w") as f:
        json.dump(s, f, indent=1)
    print(
        f"busy main-thread samples: {s['busy_samples']}; under instrumentation frames: "
        f"{s['instrumentation_samples']} ({s['instrumentation_share_pct']:.2f} %)"
    )
    print("inclusive, by outermost instrumentation frame:")
    for k, v, pct in s["inclusive_by_entry"]:
        print(f"  {pct:6.2f} %  {v:6d}  {k}")
    print("self, by leaf frame (inside instrumentation stacks):")
    for k, v, pct in s["self_by_leaf"]:
        print(f"  {pct:6.2f} %  {v:6d}  {k}")
    print(f"wrote {base}.txt, {base}.json, {base}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
