"""Where the async path's cost is: e6observe's async hooks switched off piece by piece.

    .venv/bin/python benchmarks/aio_ablation.py [--rounds 8] [--seconds 0.8]

One process (pinned to the second CPU; the simulator, in its own process, to the first) runs 64
concurrent ``SELECT 1`` loops on one event loop, each task on its own ``AsyncConnection``, in
rounds that alternate (fresh random order) between these variants, and reports the querying
thread's CPU per query and its ratio to ``bare`` of the same round:

* ``bare``              - not instrumented;
* ``full``              - ``instrument(otel=False)``: every async hook;
* ``rpc-passthrough``   - the RPC wrapper reduced to a plain pass-through (no timing callback);
* ``no-descriptors``    - that, and the ``_strategy``/``_pending_strategy`` descriptors removed;
* ``no-cursor-wrappers``- that, and the cursor wrappers (``execute``, ``_clear``,
  ``_next_batch``, ``cancel``) restored to the connector's own.

In-process instrument/uninstrument, so this is a diagnosis, not the benchmark (which compares
separate processes; see benchmarks/run.py ``--only async``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.8)
    ap.add_argument("--tasks", type=int, default=64)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, {cpus[1]})
    sim = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "simproc.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpus[0]})) if pin else None,
    )
    assert sim.stdout is not None and sim.stdin is not None
    port = json.loads(sim.stdout.readline())["port"]
    from e6data_python_connector import aio
    from e6data_python_connector.async_connection import AsyncConnection
    from e6data_python_connector.async_cursor import AsyncCursor

    import e6observe
    from e6observe.hooks import aio as hook
    from e6observe.hooks.stubs import mark_wrapper

    full = hook._timed_aio_call

    def passthrough(mc: Any, timer: Any, interp: Any) -> Callable[..., Any]:
        def timed(request: Any, *args: Any, **kwargs: Any) -> Any:
            return mc(request, *args, **kwargs)

        return mark_wrapper(timed, mc, timer.method)

    variants = ["bare", "full", "rpc-passthrough", "no-descriptors", "no-cursor-wrappers"]
    saved: dict[tuple[Any, str], Any] = {}

    def strip(v: str) -> None:
        if v in ("no-descriptors", "no-cursor-wrappers"):
            for n in ("_strategy", "_pending_strategy"):
                saved[(AsyncConnection, n)] = AsyncConnection.__dict__[n]
                delattr(AsyncConnection, n)
        if v == "no-cursor-wrappers":
            for n in ("execute", "_clear", "_next_batch", "cancel"):
                f = AsyncCursor.__dict__.get(n)
                if f is not None and hasattr(f, "__wrapped__"):
                    saved[(AsyncCursor, n)] = f
                    setattr(AsyncCursor, n, f.__wrapped__)

    def unstrip() -> None:
        for (cls, n), val in saved.items():
            setattr(cls, n, val)
        saved.clear()

    async def run() -> dict[str, list[float]]:
        conns = [
            await aio.connect(host="127.0.0.1", port=port, username="bench@example.com", password="x")
            for _ in range(a.tasks)
        ]

        async def one(c: Any, deadline: float, n: list[int]) -> None:
            while time.perf_counter() < deadline:
                cur = c.cursor()
                await cur.execute("SELECT 1")
                await cur.fetchall()
                await cur.close()
                n[0] += 1

        res: dict[str, list[float]] = {v: [] for v in variants}
        rng = random.Random(1)
        for _ in range(a.rounds):
            order = variants[:]
            rng.shuffle(order)
            for v in order:
                if v != "bare":
                    hook._timed_aio_call = full if v == "full" else passthrough  # type: ignore[assignment]
                    e6observe.instrument(otel=False, watcher_interval=3600)
                    for c in conns:
                        e6observe.instrument_connection(c)
                    strip(v)
                n = [0]
                c0, t0 = time.thread_time(), time.perf_counter()
                await asyncio.gather(*(one(c, t0 + a.seconds, n) for c in conns))
                res[v].append((time.thread_time() - c0) / max(1, n[0]) * 1e6)
                if v != "bare":
                    unstrip()
                    e6observe.uninstrument()
        hook._timed_aio_call = full  # type: ignore[assignment]
        for c in conns:
            await c.close()
        return res

    try:
        res = asyncio.run(run())
    finally:
        sim.stdin.write('{"cmd": "quit"}\n')
        sim.stdin.flush()
        sim.wait(10)
    for v in variants:
        ratios = [x / b for x, b in zip(res[v], res["bare"])]
        print(
            f"{v:<19} thread CPU {statistics.median(res[v]):7.1f} us/query  ratio to bare "
            f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
