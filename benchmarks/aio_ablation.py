"""Where the async path's cost is: e6observe's async hooks switched off piece by piece.

    .venv/bin/python benchmarks/aio_ablation.py [--rounds 12] [--seconds 0.8] [--opcodes]

One process (pinned to the second CPU; the simulator, in its own process, to the first) runs 64
concurrent ``SELECT 1`` loops on one event loop, each task on its own ``AsyncConnection``, in
rounds that alternate (fresh random order) between these variants, and reports the querying
thread's CPU per query and its ratio to ``bare`` of the same round:

* ``bare``           - not instrumented;
* ``full``           - ``instrument(otel=False)``: every async hook;
* ``rpc-only``       - the RPC wrapper and its done-callback, the cursor wrappers (``execute``,
  ``_clear``, ``_next_batch``, ``cancel``) left out (no query accounting);
* ``cursor-only``    - the cursor wrappers, the stubs left unwrapped (no RPC timing);
* ``descriptors``    - neither: only the ``_strategy``/``_pending_strategy`` descriptors and the
  ``_initialize`` wrapper.

Every variant of every round opens its own 64 connections after it is set up (and closes them
after): a connection used by an instrumented round carries what that installation did to it
into the next round, which would blur the comparison.

``--opcodes`` instead counts, deterministically, the bytecode instructions executed in
e6observe's frames per query (``sys.settrace`` opcode events) and the frames entered (calls and
coroutine resumptions), by function, for ``full``: a measure of the hooks' Python work that the
load of a shared machine does not move.

In-process instrument/uninstrument, so this is a diagnosis, not the benchmark (which compares
separate processes; see benchmarks/run.py ``--only async``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import statistics
import subprocess
import sys
import time
from types import FrameType
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = 64
VARIANTS = ("bare", "full", "rpc-only", "cursor-only", "descriptors")


def _setups() -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    import e6observe
    from e6observe.hooks import aio as hook

    real = {n: getattr(hook, n) for n in ("_make_execute", "_make_next_batch", "_make_clear")}
    wrap_stub = hook.AioHook.wrap_stub

    def keep(orig: Any, *args: Any, **kwargs: Any) -> Any:
        return orig

    def no_stub(self: Any, *args: Any, **kwargs: Any) -> bool:
        return False

    def setup(cursor: bool, rpc: bool) -> tuple[Callable[[], None], Callable[[], None]]:
        def up() -> None:
            if not cursor:
                for n in real:
                    setattr(hook, n, keep)
            if not rpc:
                hook.AioHook.wrap_stub = no_stub  # type: ignore[method-assign]
            e6observe.instrument(otel=False, watcher_interval=3600)

        def down() -> None:
            e6observe.uninstrument()
            for n, f in real.items():
                setattr(hook, n, f)
            hook.AioHook.wrap_stub = wrap_stub  # type: ignore[method-assign]

        return up, down

    def nothing() -> None:
        return None

    return {
        "bare": (nothing, nothing),
        "full": setup(True, True),
        "rpc-only": setup(False, True),
        "cursor-only": setup(True, False),
        "descriptors": setup(False, False),
    }


async def _connect(port: int, n: int) -> list[Any]:
    from e6data_python_connector import aio

    return [
        await aio.connect(host="127.0.0.1", port=port, username="bench@example.com", password="x")
        for _ in range(n)
    ]


async def _loop(c: Any, deadline: float, n: list[int], limit: Optional[int] = None) -> None:
    done = 0
    while time.perf_counter() < deadline and (limit is None or done < limit):
        cur = c.cursor()
        await cur.execute("SELECT 1")
        await cur.fetchall()
        await cur.close()
        n[0] += 1
        done += 1


async def _timed(port: int, rounds: int, seconds: float, tasks: int) -> dict[str, list[float]]:
    setups = _setups()
    res: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rng = random.Random(1)
    for r in range(rounds + 1):  # round 0 warms up and is not kept
        order = list(VARIANTS)
        rng.shuffle(order)
        for v in order:
            up, down = setups[v]
            up()
            conns = await _connect(port, tasks)
            n = [0]
            c0, t0 = time.thread_time(), time.perf_counter()
            await asyncio.gather(*(_loop(c, t0 + seconds, n) for c in conns))
            if r:
                res[v].append((time.thread_time() - c0) / max(1, n[0]) * 1e6)
            for c in conns:
                await c.close()
            down()
    return res


async def _opcodes(port: int, tasks: int, per_task: int) -> tuple[int, dict[str, list[int]]]:
    import e6observe

    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])  # entries, opcodes
    marker = os.sep + "e6observe" + os.sep

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if marker not in frame.f_code.co_filename:
            return None
        c = counts[frame.f_code.co_name]
        if event == "call":  # a call or a coroutine resumption
            c[0] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            c[1] += 1
        return trace

    e6observe.instrument(otel=False, watcher_interval=3600)
    try:
        conns = await _connect(port, tasks)
        n = [0]
        far = time.perf_counter() + 3600
        await asyncio.gather(*(_loop(c, far, n, 3) for c in conns))  # warm up
        n = [0]
        sys.settrace(trace)
        try:
            await asyncio.gather(*(_loop(c, far, n, per_task) for c in conns))
        finally:
            sys.settrace(None)
        for c in conns:
            await c.close()
    finally:
        e6observe.uninstrument()
    return n[0], dict(counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=0.8)
    ap.add_argument("--tasks", type=int, default=TASKS)
    ap.add_argument("--opcodes", action="store_true", help="count e6observe's bytecode per query instead")
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
    try:
        if a.opcodes:
            nq, counts = asyncio.run(_opcodes(port, a.tasks, 5))
        else:
            res = asyncio.run(_timed(port, a.rounds, a.seconds, a.tasks))
    finally:
        sim.stdin.write('{"cmd": "quit"}\n')
        sim.stdin.flush()
        sim.wait(10)
    if a.opcodes:
        total = sum(c[1] for c in counts.values())
        entries = sum(c[0] for c in counts.values())
        print(f"{nq} queries: {total / nq:.0f} opcodes and {entries / nq:.1f} frames entered per query")
        for name, (e, o) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:<24} {e / nq:6.2f} entries  {o / nq:7.1f} opcodes")
        return 0
    for v in VARIANTS:
        ratios = [x / b for x, b in zip(res[v], res["bare"])]
        print(
            f"{v:<12} thread CPU {statistics.median(res[v]):7.1f} us/query  ratio to bare "
            f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
