"""Microbenchmarks of e6observe's hot path, piece by piece, in nanoseconds.

    .venv/bin/python benchmarks/hotpath.py [--json benchmarks/results/hotpath.json]

Whole-query timings on a busy 2-core machine cannot resolve a few microseconds; these can
(``timeit``, best of several repeats, so other processes' load mostly drops out). Each figure is
the cost e6observe adds around one call, i.e. the wrapper's time minus the wrapped call's:

* ``rpc_wrapper``: the channel hook's timing closure around one unary call (strategy header
  read, two clock reads, cached histogram child, observe);
* ``cursor_execute`` / ``cursor_fetch`` / ``cursor_clear``: the cursor hook's wrappers around
  the connector's methods (the originals replaced by no-ops for the measurement, on a real
  connector ``Cursor``);
* ``cache_write``: one write through the strategy-cache hook's fallback dict subclass, minus a
  plain dict write (only a connector whose writers cannot be redirected gets the subclass; the
  usual install leaves the cache a plain dict, so the connector's two writes per query cost
  nothing and are not in ``per_query_hooks_ns``);
* ``rpc_wrapper_other_signature``: the same for a multi-callable whose call signature is not
  grpc's documented one (the hook's generic path);
* ``observe``: one recorder histogram observe (a list append; the fold into buckets every
  ``FOLD_AT`` values included);
* ``otel_record`` / ``otel_drain_per_series``: one OpenTelemetry SDK histogram ``record`` (what
  replaying each value into the SDK would cost), against what the OTel sink pays per series at
  each collection to hand the SDK that series' delta (``otel_bulk_points`` /
  ``otel_replayed_values`` show which path it took).

The per-query budget adds them up for one ``SELECT 1`` (6 RPCs, 1 execute, 2 fetch_batch calls,
1 clear, 2 cache writes) and compares it with the bare query's main-thread CPU and latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import timeit
from typing import Any, Callable, Optional

N = 20_000
REPEAT = 7


def best_ns(fn: Callable[[], Any], n: int = 0, repeat: int = 0) -> float:
    """Best-of-``repeat`` time of one ``fn()`` call, ns."""
    t = timeit.Timer(fn)
    n, repeat = n or N, repeat or REPEAT
    return min(t.repeat(repeat=repeat, number=n)) / n * 1e9


def measure() -> dict[str, Any]:
    from e6data_python_connector import e6data_grpc as g

    from e6observe.config import Options
    from e6observe.hooks import HookContext, channel, cursor, strategy_cache, stubs
    from e6observe.recorder import Recorder

    opts = Options.resolve({})
    rec = Recorder()
    ctx = HookContext(rec, opts, None)
    out: dict[str, Any] = {}

    # -- one RPC through the channel hook ------------------------------------------------------
    metadata = [("plannerip", "127.0.0.1"), ("cluster-name", "bench"), ("strategy", "blue")]

    class Rpc:
        """A multi-callable with grpc's documented call signature (the hook's fast path)."""

        def __call__(
            self,
            request: Any,
            timeout: Any = None,
            metadata: Any = None,
            credentials: Any = None,
            wait_for_ready: Any = None,
            compression: Any = None,
        ) -> Any:
            return request

        with_call = __call__
        future = __call__

    def rpc_any(request: Any, *args: Any, **kw: Any) -> Any:  # some other call signature
        return request

    rpc_any.with_call = rpc_any  # type: ignore[attr-defined]
    rpc_any.future = rpc_any  # type: ignore[attr-defined]
    rpc = Rpc()
    req = object()
    timed = channel._timed_call(rpc, stubs.Timer(rec, "prepareStatement"))
    base = best_ns(lambda: rpc(req, metadata=metadata))
    out["rpc_wrapper"] = best_ns(lambda: timed(req, metadata=metadata)) - base
    timed_any = channel._timed_call(rpc_any, stubs.Timer(rec, "prepareStatement"))
    base = best_ns(lambda: rpc_any(req, metadata=metadata))
    out["rpc_wrapper_other_signature"] = best_ns(lambda: timed_any(req, metadata=metadata)) - base

    # -- recorder pieces -----------------------------------------------------------------------
    h = rec.rpc_histogram("prepareStatement", "blue", "OK")
    out["observe"] = best_ns(lambda: h.observe(0.0003))
    out["query_started_finished"] = best_ns(
        lambda: (rec.query_started("blue"), rec.query_finished("blue", "ok", 0.002))
    )

    # -- the strategy cache's fallback dict subclass -------------------------------------------
    plain: dict[str, Any] = {"query_strategy_map": {}}
    observed = strategy_cache.ObservedCache(plain)
    observed._e6observe = None
    qmap: dict[str, Any] = {}
    d_plain = best_ns(lambda: plain.__setitem__("query_strategy_map", qmap))
    out["cache_write"] = best_ns(lambda: observed.__setitem__("query_strategy_map", qmap)) - d_plain

    # -- cursor wrappers on a real connector Cursor, originals replaced by no-ops ---------------
    conn = g.Connection(
        host="127.0.0.1", port=1, username="bench@example.com", password="bench-password"
    )  # never dialled: no RPC is made here
    cur = g.Cursor(conn)
    cur._query_id = "q-1"

    def noop(self: Any, *a: Any, **k: Any) -> Any:
        return None

    def noop_rows(self: Any, *a: Any, **k: Any) -> Any:
        return [[1]]

    try:
        execute = cursor._make_execute(noop, ctx)
        clear = cursor._make_clear(noop, ctx)
        fetch = cursor._make_fetch(noop_rows, ctx)
        base = best_ns(lambda: noop(cur, "SELECT 1"))

        def cycle() -> None:
            execute(cur, "SELECT 1")
            clear(cur)

        out["cursor_execute_plus_clear"] = best_ns(cycle) - 2 * base
        out["cursor_fetch"] = best_ns(lambda: fetch(cur)) - best_ns(lambda: noop_rows(cur))
    except Exception as exc:  # the hook's private factories changed: report, do not fail
        out["cursor_error"] = f"{type(exc).__name__}: {exc}"

    # -- OpenTelemetry: one SDK record (what replaying a value would cost) against handing
    #    the SDK one series' delta at collection time (what the sink does) -------------------
    from types import SimpleNamespace

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from e6observe.sinks.otel import OtelSink

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    hist = mp.get_meter("bench").create_histogram("rpc.client.call.duration", unit="s")
    attrs = {
        "rpc.method": "prepareStatement",
        "e6data.strategy": "blue",
        "rpc.status_code": "OK",
        "server.address": "127.0.0.1",
        "server.port": 1,
    }
    out["otel_record"] = best_ns(lambda: hist.record(0.0003, attrs))
    mp.shutdown()

    rec2 = Recorder()
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    sink = OtelSink(rec2, SimpleNamespace(meter_provider=mp, logger_provider=LoggerProvider()))
    sink.start()
    series = [
        rec2.rpc_histogram(m, "blue", "OK")
        for m in (
            "prepareStatementV2",
            "executeStatementV2",
            "getResultMetadata",
            "getNextResultBatch",
            "clear",
            "status",
        )
    ]
    series.append(rec2.query_histogram("blue", "ok"))

    def collection() -> None:
        for h in series:
            h.observe(0.0003)
        sink._drain()

    per_collection = best_ns(collection, n=max(1, N // 20)) - len(series) * out["observe"]
    out["otel_drain_per_series"] = per_collection / len(series)
    out["otel_bulk_points"] = sink.bulk_points
    out["otel_replayed_values"] = sink.replayed_values
    sink.close()
    mp.shutdown()
    rec2.stop()

    per_query = (
        6 * out["rpc_wrapper"]
        + out.get("cursor_execute_plus_clear", float("nan"))
        + 2 * out.get("cursor_fetch", float("nan"))
    )
    out["per_query_hooks_ns"] = per_query
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--query-ms",
        type=float,
        default=2.0,
        help="bare median query latency to express the budget against (ms)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke runs)")
    a = ap.parse_args(argv)
    if a.quick:
        global N, REPEAT
        N, REPEAT = 500, 2
    t = time.perf_counter()
    out = measure()
    out["query_ms"] = a.query_ms
    out["per_query_hooks_pct_of_query"] = out["per_query_hooks_ns"] / (a.query_ms * 1e6) * 100
    for k, v in out.items():
        if isinstance(v, float):
            unit = "%" if k.endswith("pct_of_query") else ("ms" if k == "query_ms" else "ns")
            print(f"{k:34s} {v:10.1f} {unit}")
        else:
            print(f"{k:34s} {v}")
    print(f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
