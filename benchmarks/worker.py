"""One benchmark worker: a process running the real connector under one instrumentation mode.

The runner starts one worker per mode, all connected to the same simulator process, and sends
them commands one at a time (JSON lines on stdin; replies on the original stdout, which is
reserved for the protocol - anything a library prints goes to stderr). While one worker runs a
round the runner keeps the others stopped (SIGSTOP), so their background threads cannot take
CPU from the worker being measured.

A "query" is ``cursor.execute("SELECT 1")``, ``cursor.fetchall()``, ``cursor.clear()`` on a
reused connection and cursor: six RPCs once the session exists.
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from modes import Mode, live_sink  # noqa: E402

USER = "bench@example.com"
PASSWORD = "bench-password"  # the simulator accepts any non-empty credentials
QUERY = "SELECT 1"
#: RPCs one query makes after the session exists (prepare, execute, metadata, 2 batches, clear).
RPCS_PER_QUERY = 6


class Worker:
    def __init__(self, mode: str, host: str, port: int) -> None:
        self.mode = Mode(mode)
        self.host, self.port = host, port
        self.proc = psutil.Process()
        # The application has imported the connector before it would set anything else up, so
        # every mode's RSS baselines include it (the connector reaches its channels through
        # ``grpc.*_channel`` at call time, so OpenTelemetry's gRPC hook still applies).
        import e6data_python_connector.e6data_grpc  # noqa: F401

        #: The async API, imported up front like the sync one (3.11+ and connector 3.x only).
        self.aio: Any = None
        if sys.version_info >= (3, 11):
            try:
                from e6data_python_connector import aio

                self.aio = aio
            except Exception:
                self.aio = None
        self.rss_start = self.proc.memory_info().rss
        self.mode.install()
        self.rss_installed = self.proc.memory_info().rss
        self.conn = self._connect()
        self.cur = self.conn.cursor()
        self._pool: list[tuple[Any, Any]] = []
        self.queries = 0
        self._loop: Any = None
        self._aio_conns: list[Any] = []
        self._aio_pool: Any = None
        self._conn_pool: Any = None

    def _connect(self) -> Any:
        from e6data_python_connector import e6data_grpc

        return e6data_grpc.Connection(host=self.host, port=self.port, username=USER, password=PASSWORD)

    def _query(self, sql: str = QUERY) -> None:
        cur = self.cur
        cur.execute(sql)
        cur.fetchall()
        cur.clear()

    # -- commands ---------------------------------------------------------------------------
    def cmd_latency(self, n: int, warmup: int = 5) -> dict[str, Any]:
        """Per-query wall time (ns) of ``n`` queries, after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self._query()
        out = [0] * n
        clock = time.perf_counter_ns
        cur = self.cur
        th0, pr0 = time.thread_time_ns(), time.process_time_ns()
        for i in range(n):
            t = clock()
            cur.execute(QUERY)
            cur.fetchall()
            cur.clear()
            out[i] = clock() - t
        th1, pr1 = time.thread_time_ns(), time.process_time_ns()
        self.queries += n + warmup
        # CPU per query: of the querying thread (hooks run there) and of the whole process
        # (adds the OpenTelemetry reader's drain, the watcher, gRPC's own threads).
        return {"lat_ns": out, "thread_cpu_ns": (th1 - th0) / n, "process_cpu_ns": (pr1 - pr0) / n}

    def cmd_run(self, n: int, distinct_from: Optional[int] = None) -> dict[str, Any]:
        """``n`` untimed queries (``SELECT <k>`` with distinct k when ``distinct_from`` is set)."""
        t = time.perf_counter()
        if distinct_from is None:
            for _ in range(n):
                self._query()
        else:
            for k in range(distinct_from, distinct_from + n):
                self._query(f"SELECT {k}")
        self.queries += n
        return {"seconds": time.perf_counter() - t, **self.cmd_rss()}

    def cmd_rss(self, uss: bool = False) -> dict[str, Any]:
        info = self.proc.memory_info()
        out: dict[str, Any] = {
            "rss": info.rss,
            "queries": self.queries,
            "rss_start": self.rss_start,
            "rss_installed": self.rss_installed,
            "rss_before_agent": self.mode.rss_before_agent,
        }
        if uss:
            out["uss"] = self.proc.memory_full_info().uss
        return out

    def cmd_throughput(self, threads: int, seconds: float) -> dict[str, Any]:
        """Queries completed by ``threads`` threads (one connection each) in ``seconds``."""
        while len(self._pool) < threads:
            c = self._connect()
            self._pool.append((c, c.cursor()))
        start = threading.Event()
        counts = [0] * threads
        errors = [0] * threads
        deadline_box = [0.0]

        def loop(i: int) -> None:
            _, cur = self._pool[i]
            start.wait()
            deadline = deadline_box[0]
            n = 0
            while time.perf_counter() < deadline:
                try:
                    cur.execute(QUERY)
                    cur.fetchall()
                    cur.clear()
                    n += 1
                except Exception:
                    errors[i] += 1
            counts[i] = n

        ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
        for t in ts:
            t.start()
        t0 = time.perf_counter()
        deadline_box[0] = t0 + seconds
        start.set()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        self.queries += sum(counts)
        return {"queries": sum(counts), "errors": sum(errors), "elapsed": elapsed}

    # -- the other paths users run (issue 17): large results, async, pools ------------------
    def cmd_large(self, rows: int, style: str, reps: int = 1) -> dict[str, Any]:
        """Wall time (ns) of ``reps`` queries returning ``rows`` rows x 10 columns, fetched with
        ``fetchall()`` or a ``fetchmany(1000)`` loop (``style``), sync API."""
        sql = f"SELECT * FROM wide LIMIT {rows}"
        cur = self.cur
        out = []
        got = 0
        clock = time.perf_counter_ns
        th0, pr0 = time.thread_time_ns(), time.process_time_ns()
        for _ in range(reps):
            t = clock()
            cur.execute(sql)
            if style == "fetchall":
                got = len(cur.fetchall())
            else:
                got = 0
                while True:
                    part = cur.fetchmany(1000)
                    if not part:
                        break
                    got += len(part)
            cur.clear()
            out.append(clock() - t)
        self.queries += reps
        if got != rows:
            raise RuntimeError(f"fetched {got} rows, expected {rows}")
        return {
            "lat_ns": out,
            "thread_cpu_ns": (time.thread_time_ns() - th0) / reps,
            "process_cpu_ns": (time.process_time_ns() - pr0) / reps,
        }

    def _run_async(self, coro: Any) -> Any:
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def _need_aio(self) -> Any:
        if self.aio is None:
            raise RuntimeError(
                "the connector's async API is unavailable (Python 3.11+, e6data-python-connector[async] 3.x)"
            )
        return self.aio

    async def _aio_connect(self) -> Any:
        aio = self._need_aio()
        return await aio.connect(host=self.host, port=self.port, username=USER, password=PASSWORD)

    def cmd_large_aio(self, rows: int, style: str, reps: int = 1) -> dict[str, Any]:
        """:meth:`cmd_large` through the async API (one ``AsyncConnection``)."""
        sql = f"SELECT * FROM wide LIMIT {rows}"

        async def run() -> dict[str, Any]:
            if not self._aio_conns:
                self._aio_conns.append(await self._aio_connect())
            conn = self._aio_conns[0]
            out = []
            got = 0
            clock = time.perf_counter_ns
            for _ in range(reps):
                t = clock()
                cur = conn.cursor()
                await cur.execute(sql)
                if style == "fetchall":
                    got = len(await cur.fetchall())
                else:
                    got = 0
                    while True:
                        part = await cur.fetchmany(1000)
                        if not part:
                            break
                        got += len(part)
                await cur.close()
                out.append(clock() - t)
            if got != rows:
                raise RuntimeError(f"fetched {got} rows, expected {rows}")
            return {"lat_ns": out}

        th0, pr0 = time.thread_time_ns(), time.process_time_ns()
        res: dict[str, Any] = self._run_async(run())
        res["thread_cpu_ns"] = (time.thread_time_ns() - th0) / reps
        res["process_cpu_ns"] = (time.process_time_ns() - pr0) / reps
        self.queries += reps
        return res

    def cmd_aio_concurrent(self, tasks: int, seconds: float, pool: bool = False) -> dict[str, Any]:
        """``tasks`` concurrent query loops on one event loop for ``seconds``: each task on its
        own ``AsyncConnection`` or, with ``pool``, leasing from one ``AsyncConnectionPool``
        (16 connections for the 64 tasks). Queries completed and per-query latencies (ns)."""
        import asyncio

        aio = self._need_aio()

        async def run() -> dict[str, Any]:
            if pool and self._aio_pool is None:
                p = aio.AsyncConnectionPool(
                    min_size=16,
                    max_size=16,
                    max_overflow=0,
                    host=self.host,
                    port=self.port,
                    username=USER,
                    password=PASSWORD,
                )
                await p.open()
                self._aio_pool = p
            while not pool and len(self._aio_conns) < tasks:
                self._aio_conns.append(await self._aio_connect())
            lat: list[int] = []
            errors = [0]
            clock = time.perf_counter_ns
            go = asyncio.Event()
            deadline = [0.0]

            async def one(i: int) -> None:
                await go.wait()
                while time.perf_counter() < deadline[0]:
                    t = clock()
                    try:
                        if pool:
                            lease = await self._aio_pool.get_connection()
                            try:
                                cur = lease.cursor()
                                await cur.execute(QUERY)
                                await cur.fetchall()
                                await cur.close()
                            finally:
                                await self._aio_pool.return_connection(lease)
                        else:
                            cur = self._aio_conns[i].cursor()
                            await cur.execute(QUERY)
                            await cur.fetchall()
                            await cur.close()
                    except Exception:
                        errors[0] += 1
                        continue
                    lat.append(clock() - t)

            ts = [asyncio.ensure_future(one(i)) for i in range(tasks)]
            await asyncio.sleep(0)
            pr0 = time.process_time_ns()
            t0 = time.perf_counter()
            deadline[0] = t0 + seconds
            go.set()
            await asyncio.gather(*ts)
            return {
                "queries": len(lat),
                "errors": errors[0],
                "lat_ns": lat,
                "elapsed": time.perf_counter() - t0,
                "process_cpu_ns": (time.process_time_ns() - pr0) / max(1, len(lat)),
            }

        res: dict[str, Any] = self._run_async(run())
        self.queries += res["queries"]
        return res

    def cmd_pool_threads(self, threads: int, seconds: float) -> dict[str, Any]:
        """``threads`` threads sharing one ``ConnectionPool`` (max_size = threads): each loop
        leases a connection, runs one query on its cursor and returns it."""
        from e6data_python_connector.connection_pool import ConnectionPool

        if self._conn_pool is None:
            self._conn_pool = ConnectionPool(
                min_size=threads,
                max_size=threads,
                max_overflow=0,
                host=self.host,
                port=self.port,
                username=USER,
                password=PASSWORD,
            )
        pool = self._conn_pool
        start = threading.Event()
        lat: list[list[int]] = [[] for _ in range(threads)]
        errors = [0] * threads
        deadline_box = [0.0]
        clock = time.perf_counter_ns

        def loop(i: int) -> None:
            start.wait()
            deadline = deadline_box[0]
            mine = lat[i]
            while time.perf_counter() < deadline:
                t = clock()
                try:
                    with pool.get_connection_context() as pc:
                        cur = pc.cursor()
                        cur.execute(QUERY)
                        cur.fetchall()
                        cur.clear()
                except Exception:
                    errors[i] += 1
                    continue
                mine.append(clock() - t)

        ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
        for t in ts:
            t.start()
        pr0 = time.process_time_ns()
        t0 = time.perf_counter()
        deadline_box[0] = t0 + seconds
        start.set()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        flat = [x for per in lat for x in per]
        self.queries += len(flat)
        return {
            "queries": len(flat),
            "errors": sum(errors),
            "lat_ns": flat,
            "elapsed": elapsed,
            "process_cpu_ns": (time.process_time_ns() - pr0) / max(1, len(flat)),
        }

    def cmd_call_count(self, rows: int) -> dict[str, Any]:
        """e6observe's Python-level calls (``sys.setprofile``, this thread) in one ``SELECT 1``
        query and in one ``rows``-row large query (fetchall and fetchmany(1000)), untimed."""
        from callcount import CallCounter

        c = CallCounter()
        out: dict[str, Any] = {}
        self._query()
        with c:
            self._query()
        out["select1"] = c.total()
        for style in ("fetchall", "fetchmany"):
            self.cmd_large(rows, style)
            with c:
                self.cmd_large(rows, style)
            out[f"large_{style}"] = c.total()
            out[f"large_{style}_by_function"] = dict(c.calls.most_common())
        return out

    def cmd_switch(self, flag_path: str) -> dict[str, Any]:
        """Run one query during which the connector applies an announced switch.

        The moment the connector's cache A changes is taken without touching the connector: a
        profile function (``sys.setprofile``, this thread only, this query only) reads
        ``e6data_grpc._local_strategy_cache['active_strategy']`` at every call/return event and
        stamps CLOCK_MONOTONIC the first time it differs. The stamp is written into a shared
        memory page the runner polls - a plain memory write, because any system call here
        (a socket send, say) would release the GIL in the middle of the connector's write and
        let other threads run before e6observe's own hook finished, which is not what an
        application thread does.
        """
        from e6data_python_connector import e6data_grpc as g

        before = g._local_strategy_cache.get("active_strategy")
        with open(flag_path, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 16)
        state: dict[str, Any] = {"t0": None, "to": None}

        def prof(frame: Any, event: str, arg: Any) -> None:
            if state["t0"] is None:
                v = g._local_strategy_cache.get("active_strategy")
                if v != before:
                    t0 = time.monotonic_ns()
                    state["t0"], state["to"] = t0, v
                    struct.pack_into("<q", mm, 0, t0)

        sys.setprofile(prof)
        try:
            self._query()
        finally:
            sys.setprofile(None)
            mm.close()
        return {"t0": state["t0"], "from": before, "to": state["to"]}

    def close_extra(self) -> None:
        """Close the async connections, the async pool and the thread pool (at quit)."""
        try:
            if self._loop is not None:

                async def close() -> None:
                    for c in self._aio_conns:
                        await c.close()
                    if self._aio_pool is not None:
                        await self._aio_pool.close_all()

                self._loop.run_until_complete(close())
                self._loop.close()
            if self._conn_pool is not None:
                self._conn_pool.close_all()
        except Exception:
            pass

    def cmd_oob_switch(self, to: str) -> dict[str, Any]:
        """Change the active strategy behind every hook's back (``dict.__setitem__``)."""
        from e6data_python_connector import e6data_grpc as g

        cache = g._local_strategy_cache
        with g._strategy_lock:
            before = cache.get("active_strategy")
            dict.__setitem__(cache, "active_strategy", to)
            t0 = time.monotonic_ns()
        return {"t0": t0, "from": before, "to": to}

    def cmd_render(self, n: int) -> dict[str, Any]:
        """In-process render time (ns) of the Prometheus exposition, ``n`` times."""
        render = _renderer()
        if render is None:
            return {"error": "no e6observe Prometheus renderer found"}
        out = []
        size = 0
        for _ in range(n):
            t = time.perf_counter_ns()
            body = render()
            out.append(time.perf_counter_ns() - t)
            size = len(body)
        return {"render_ns": out, "bytes": size}

    def cmd_watcher_cpu(self, seconds: float) -> dict[str, Any]:
        """CPU seconds the watcher thread used over ``seconds`` of wall time (idle process)."""
        tid = None
        for t in threading.enumerate():
            if "watcher" in t.name:
                tid = t.native_id
        if tid is None:
            return {"error": "no watcher thread"}

        def cpu() -> float:
            for th in self.proc.threads():
                if th.id == tid:
                    return float(th.user_time + th.system_time)
            return float("nan")

        s0, c0, w0 = _watcher_self_cpu(), cpu(), time.perf_counter()
        time.sleep(seconds)
        s1, c1, w1 = _watcher_self_cpu(), cpu(), time.perf_counter()
        w = live_sink("watcher")
        lifetime = w.cpu_seconds_per_second() if w is not None else None
        return {
            "cpu_s": c1 - c0,
            "wall_s": w1 - w0,
            "self_reported_cpu_s": None if s0 is None or s1 is None else s1 - s0,
            "lifetime_cpu_ms_per_s": None if lifetime is None else 1000.0 * lifetime,
            "interval_s": getattr(w, "interval", None),
        }

    def cmd_counts(self) -> dict[str, Any]:
        return {"mode": self.mode.counts(), "queries": self.queries, "gc": gc.get_count()}


def _renderer() -> Optional[Callable[[], bytes]]:
    """Render the live /metrics exposition in process (the registry the endpoint serves)."""
    sink = live_sink("sink.prometheus")
    if sink is None:
        return None
    from prometheus_client import generate_latest

    registry = sink.registry
    return lambda: generate_latest(registry)


def _watcher_self_cpu() -> Optional[float]:
    """CPU seconds the running watcher measured on itself (``time.thread_time``)."""
    try:
        from watchercost import cpu_seconds

        w = live_sink("watcher")
        return None if w is None else float(cpu_seconds([w]))
    except Exception:
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    # The protocol owns the real stdout; everything printed by libraries goes to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    def reply(obj: Any) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        w = Worker(args.mode, args.host, args.port)
        w.cmd_run(args.warmup)
    except Exception as exc:
        reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    reply(
        {
            "ok": True,
            "result": {
                "pid": os.getpid(),
                "prometheus_port": w.mode.prometheus_port,
                "rss_start": w.rss_start,
                "rss_installed": w.rss_installed,
            },
        }
    )
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            w.close_extra()
            w.mode.uninstall()
            reply({"ok": True})
            break
        try:
            reply({"ok": True, "result": getattr(w, "cmd_" + cmd)(**msg)})
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
