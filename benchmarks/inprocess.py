"""What the hooks alone add per sync query: ``instrument()`` on and off in one process.

    .venv/bin/python benchmarks/inprocess.py [--modes e6o-prom,e6o-mp] [--blocks 60] [--queries 200]

The harness (``run.py``) compares one process per mode, so its figures carry what differs
between processes (memory layout, hash seed, what each process imported and started) and
the machine's drift between the moments each mode runs. This tool takes both out. One process,
pinned as the harness pins (the simulator to the first allowed CPU, this process to the
second), opens one connection and then runs blocks of ``SELECT 1`` queries (``execute``, ``fetchall``,
``clear``); in each block every state runs once - e6observe uninstalled ("off") and installed
as each asked mode - in a rotated order that also flips every cycle. A mode's run starts with
``instrument()`` and a few unmeasured queries, and ends with ``uninstrument()``. Per run: the
wall time and the querying thread's CPU time (``time.thread_time``) per query. A mode's result
is the median over the blocks of (mode − off), with its quartiles.

What it leaves out, by design: the cost of a heavier process (e6observe's modules are imported
in the off blocks too) and e6observe's background threads between blocks. Read it beside the
harness's figure for the same mode: the difference is what the separate processes add.
Modes: ``e6o-prom`` (Prometheus endpoint, watcher), ``e6o-mp`` (multi-process directory),
``e6o-full`` (plus OpenTelemetry metrics into an SDK meter provider whose reader drops each
batch, and log records), each with ``modes.py``'s watcher interval. With ``e6o-full`` asked for,
its SDK providers (and their 1 s reader thread) stay up for the whole run, in every state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("e6o-prom", "e6o-mp", "e6o-full")


def _summary(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "n": float(len(values))}


def _nothing() -> None:
    return None


def _instrument_kwargs(mode: str, tmp: str) -> tuple[dict[str, Any], Callable[[], None]]:
    """``instrument()``'s keywords for ``mode``, and what to undo after the run (``measure``
    has put this directory on ``sys.path``)."""
    from modes import WATCHER_INTERVAL_S, Mode

    kwargs: dict[str, Any] = {"prometheus_port": 0, "watcher_interval": WATCHER_INTERVAL_S, "otel": False}
    if mode == "e6o-mp":
        kwargs["multiprocess_dir"] = tmp
    if mode == "e6o-full":
        m = Mode("e6o-full")
        mp, lp = m._full_sdk()
        kwargs.update(otel=True, meter_provider=mp, logger_provider=lp)

        def shut_down() -> None:
            for f in m._teardown:
                f()

        return kwargs, shut_down
    return kwargs, _nothing


def measure(modes: list[str], blocks: int, queries: int, warmup: int = 300) -> dict[str, Any]:
    """Run the alternation in this process against a simulator process of its own: in each
    block every state (off, then each of ``modes``) runs once, in a rotated order."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct, from {MODES}; got {modes!r}")
    sys.path.insert(0, HERE)
    from simstart import start_pinned

    sim, port, pin = start_pinned()
    tmp = tempfile.mkdtemp(prefix="e6o-inprocess-")
    undos: list[Callable[[], None]] = []
    try:
        import e6data_python_connector.e6data_grpc as g

        import e6observe

        kwargs: dict[str, dict[str, Any]] = {}
        for m in modes:
            kwargs[m], u = _instrument_kwargs(m, os.path.join(tmp, m))
            os.makedirs(os.path.join(tmp, m))
            undos.append(u)
        conn = g.Connection(host="127.0.0.1", port=port, username="inprocess@example.com", password="x")
        cur = conn.cursor()

        def wrapped() -> bool:
            """The connection's stub carries e6observe's RPC wrappers (checked after each run:
            an "on" run measured the hooks, an "off" run the connector alone)."""
            return any(getattr(v, "_e6observe_wrapper", False) for v in vars(conn._client).values())

        def run(n: int) -> tuple[float, float]:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            for _ in range(n):
                cur.execute("SELECT 1")
                cur.fetchall()
                cur.clear()
            return (time.perf_counter() - t0) / n * 1e6, (time.thread_time() - c0) / n * 1e6

        run(warmup)
        states = ["off", *modes]
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in states}
        as_expected = dict.fromkeys(states, 0)
        settle = max(10, queries // 4)
        for i in range(blocks):
            k = i % len(states)  # each state leads in turn, and the order flips every cycle
            order = states[k:] + states[:k]
            for state in order if (i // len(states)) % 2 == 0 else order[::-1]:
                if state == "off":
                    run(settle)
                    got["off"].append(run(queries))
                    as_expected["off"] += not wrapped() and not e6observe.is_instrumented()
                    continue
                e6observe.instrument(**kwargs[state])
                try:
                    run(settle)
                    got[state].append(run(queries))
                    as_expected[state] += wrapped() and e6observe.is_instrumented()
                finally:
                    e6observe.uninstrument()
        conn.close()
    finally:
        sim.kill()
        for u in undos:
            u()
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "blocks": blocks,
        "queries_per_block": queries,
        "pinned": pin,
        #: Runs whose state was checked as intended (stub wrapped and installed, or neither).
        "runs_as_intended": as_expected,
        #: Per state, each block's run: [wall µs, thread CPU µs] per query.
        "runs": {k: [list(x) for x in v] for k, v in got.items()},
        "modes": {},
    }
    off = got["off"]
    for m in modes:
        r: dict[str, Any] = {}
        for j, name in ((0, "wall_us"), (1, "thread_cpu_us")):
            base = statistics.median(x[j] for x in off)
            d = _summary([a[j] - b[j] for a, b in zip(got[m], off)])
            r[name] = {
                "off": _summary([x[j] for x in off]),
                "on": _summary([x[j] for x in got[m]]),
                "added": d,
                "added_pct": d["median"] / base * 100,
            }
        out["modes"][m] = r
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="e6o-prom", help=f"comma-separated from {','.join(MODES)}")
    ap.add_argument("--blocks", type=int, default=60, help="blocks; each runs off and every mode once")
    ap.add_argument("--queries", type=int, default=200, help="measured queries per state and block")
    ap.add_argument("--json", default="", help="also write the result to this file")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        ap.error(f"--modes: distinct names from {','.join(MODES)}")
    if a.blocks < 2 or a.queries < 1:
        ap.error("--blocks must be at least 2 and --queries at least 1")
    r = measure(modes, a.blocks, a.queries)
    for m in modes:
        for name in ("wall_us", "thread_cpu_us"):
            x = r["modes"][m][name]
            print(
                f"{m} {name}: off {x['off']['median']:.1f}, on {x['on']['median']:.1f}; "
                f"on - off per block: median {x['added']['median']:+.1f} "
                f"(quartiles {x['added']['q1']:+.1f} / {x['added']['q3']:+.1f}) = {x['added_pct']:+.2f} %"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
