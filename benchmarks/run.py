"""e6observe benchmark runner: agent overhead against the bare connector and OpenTelemetry's gRPC
instrumentation, switch-visibility latency, memory, series count, /metrics render time, watcher
CPU. One command, one run, one JSON result and one plot. See benchmarks/README.md.

    ./run bench                  # the standard run (~6 min on 2 cores)
    ./run bench --quick          # smoke run (~20 s): every phase, tiny sizes
    ./run bench --long           # + 1 M RPCs memory soak and 100 k distinct queries

How bias is kept out (details in BENCHMARKS.md): every mode lives in its own long-lived worker
process, all connected to one simulator process; rounds alternate between the workers in a
fresh random order each round, and while one worker runs, the others are stopped (SIGSTOP) so
that their background threads (watcher, metric reader) cannot take CPU from it. With 2+ CPUs
the simulator is pinned to one CPU and every worker to another (``--no-pin`` turns it off), so
that no worker keeps a core placement of its own for the whole run. Ratios are
computed per round (each mode against the bare round of the same round) and summarised by their
median and spread; a second bare worker (``bare-ctl``) shows how far two identical processes
differ, i.e. the resolution of the harness.
"""

from __future__ import annotations

import argparse
import http.client
import json
import mmap
import os
import platform
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from modes import (  # noqa: E402
    DEFAULT_MODES,
    E6O_MODES,
    MODES,
    OTLP_MODES,
    WATCHER_INTERVAL_S,
    e6observe_available,
)
from stats import distribution, linear_slope, median, percentile, spread  # noqa: E402

SCHEMA = 1
RPCS_PER_QUERY = 6
TARGETS = {
    "added_median_pct_max": 3.0,
    "fraction_of_otel_added_max": 0.2,
    "throughput_ratio_32_min": 0.97,
    "switch_visible_ms_max": 1.0,
    "added_rss_mib_max": 5.0,
    "rss_growth_mib_per_1m_rpcs_max": 1.0,
    "render_ms_max": 5.0,
    # issue 17: the other paths users run
    "large_added_median_pct_max": 1.0,
    "large_calls_per_row_max": 0.0,
    "async_throughput_ratio_min": 0.99,
    "async_added_median_pct_max": 1.0,
    "pool_added_median_pct_max": 1.0,
    "startup_ms_max": 50.0,
    "startup_rss_mib_max": 3.0,
    "uninstrument_ms_max": 50.0,
    "mp_merge_ms_max": 50.0,
    "mp_added_median_pct_max": 1.0,
    "otlp_added_median_pct_max": 2.0,
    "otlp_fraction_of_otel_max": 0.1,
}
#: Rows per result batch of the simulator the runner starts (``Simulator``'s default).
SIM_BATCH_ROWS = 256
#: Every phase, in the order a run takes them.
PHASES = (
    "latency",
    "throughput",
    "render",
    "switch",
    "watcher",
    "rss",
    "series",
    "fresh-rss",
    "large",
    "async",
    "pool",
    "startup",
    "multiproc",
    "hotpath",
)
#: Modes the path phases (large, async, pool) compare: the baseline, the A/A control, e6observe
#: (and, when asked for, the bare-sdk diagnostic).
PATH_MODES = ("bare", "bare-ctl", "e6o-full", "bare-sdk")


# ----------------------------------------------------------------------------------------------
# processes


class Proc:
    """A child speaking JSON lines: one request, one reply."""

    def __init__(
        self, name: str, argv: list[str], cpus: Optional[set[int]] = None, hash_seed: Optional[int] = None
    ) -> None:
        self.name = name
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")  # identical dict/set layouts in every worker
        if hash_seed is not None:  # a replica (``--replicas``): its own layouts, the same in every mode
            env["PYTHONHASHSEED"] = str(hash_seed)
        # --pin: the child (and every thread it starts) runs only on ``cpus``.
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            bufsize=1,
            env=env,
            cwd=ROOT,
            preexec_fn=pre,
        )
        self.stopped = False
        self.hello: Any = None

    def read(self, timeout_note: str = "") -> Any:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: exited (rc={self.p.poll()}) {timeout_note}")
        msg = json.loads(line)
        if "ok" in msg and not msg["ok"]:
            raise RuntimeError(f"{self.name}: {msg.get('error')}")
        return msg.get("result", msg)

    def send(self, cmd: str, **kw: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.p.stdin.flush()

    def call(self, cmd: str, **kw: Any) -> Any:
        self.resume()
        self.send(cmd, **kw)
        return self.read(cmd)

    def pause(self) -> None:
        if not self.stopped and self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.p.pid, signal.SIGCONT)
            self.stopped = False

    def close(self) -> None:
        if self.p.poll() is not None:
            return
        self.resume()
        try:
            self.send("quit")
            self.p.wait(10)
        except Exception:
            self.p.kill()
            self.p.wait(5)


def compile_e6observe() -> str:
    """Byte-compile the e6observe package the workers import, as ``pip install`` does.

    A working tree (editable install) usually has no ``.pyc`` files, and with
    ``PYTHONDONTWRITEBYTECODE`` set none is ever written: each worker would then compile
    e6observe from source at import, and the compiler's transient memory stays in its RSS
    (about 1.3 MiB here). That is a cost of the checkout, not of the agent as deployed. The
    connector and every other dependency come from site-packages, compiled at install time.
    """
    import compileall

    import e6observe

    pkg = os.path.dirname(os.path.abspath(e6observe.__file__ or ""))
    ok = compileall.compile_dir(pkg, quiet=1)
    return f"compiled {pkg} ({'ok' if ok else 'with errors'})"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.py = sys.executable
        self.sim: Optional[Proc] = None
        self.workers: dict[str, Proc] = {}
        #: mode -> its worker processes (``--replicas``); the first is ``workers[mode]``.
        self.replicas: dict[str, list[Proc]] = {}
        self.result: dict[str, Any] = {"schema": SCHEMA}
        self.raw_lat: dict[str, list[float]] = {}  # mode -> all per-query latencies (ms)
        self.rng = random.Random(args.seed)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- set-up -------------------------------------------------------------------------------
    def pinning(self) -> tuple[Optional[set[int]], Optional[set[int]]]:
        """(simulator CPUs, worker CPUs): the first allowed CPU for the simulator, the second for
        every worker, so that no mode runs on a core placement of its own (unpinned, the
        scheduler's sticky placement made two identical bare workers differ by up to 15 %, for a
        whole run). ``--no-pin``, or fewer than 2 CPUs: (None, None)."""
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if self.a.pin is False or (self.a.pin is None and len(allowed) < 2):
            return None, None
        if len(allowed) < 2:
            raise SystemExit("--pin needs sched_setaffinity and at least 2 CPUs")
        return {allowed[0]}, {allowed[1]}

    def start(self) -> None:
        self.result["bytecode"] = compile_e6observe()
        sim_cpus, worker_cpus = self.pinning()
        self.result["pinning"] = (
            None
            if sim_cpus is None
            else {"simulator": sorted(sim_cpus), "workers": sorted(worker_cpus or ())}
        )
        self.sim = Proc(
            "sim", [self.py, os.path.join(HERE, "simproc.py"), str(self.a.sim_latency_ms)], cpus=sim_cpus
        )
        self.port = int(self.sim.read()["port"])
        self.log(f"simulator on 127.0.0.1:{self.port}")
        self.otlp: Optional[Proc] = None
        if any(m in OTLP_MODES for m in self.a.modes):
            # The receiver shares the simulator's CPU: the workers' CPU stays theirs.
            self.otlp = Proc("otlp", [self.py, os.path.join(HERE, "otlprecv.py")], cpus=sim_cpus)
            os.environ["E6O_BENCH_OTLP"] = f"127.0.0.1:{int(self.otlp.read()['port'])}"
            self.log(f"OTLP receiver on {os.environ['E6O_BENCH_OTLP']}")
        why = e6observe_available()
        modes = [m for m in self.a.modes if not (why and m in E6O_MODES)]
        self.result["skipped_modes"] = {m: why for m in self.a.modes if m not in modes}
        if why:
            self.log(f"skipping e6observe modes: {why}")
        # Start all workers together (import + connect + warm-up in parallel), then stop each.
        self.worker_cpus = worker_cpus
        for m in modes:
            self.replicas[m] = [self._spawn(m, i) for i in range(self.a.replicas)]
            self.workers[m] = self.replicas[m][0]
        for w in self._all_workers():
            w.hello = w.read("start-up")
            w.pause()
        self.result["replicas"] = self.a.replicas
        self.log(
            "workers ready: "
            + ", ".join(
                f"{m} (pid {' '.join(str(w.hello['pid']) for w in ws)})" for m, ws in self.replicas.items()
            )
        )

    def _all_workers(self) -> list[Proc]:
        return [w for ws in self.replicas.values() for w in ws]

    def _spawn(self, mode: str, replica: int = 0) -> Proc:
        return Proc(
            mode,
            [
                self.py,
                os.path.join(HERE, "worker.py"),
                "--mode",
                mode,
                "--port",
                str(self.port),
                "--warmup",
                str(self.a.warmup),
            ],
            cpus=self.worker_cpus,
            hash_seed=replica if replica else None,
        )

    def restart(self, mode: str) -> None:
        """Replace one worker (a mode's first replica) by a fresh process, started and paused."""
        self.workers[mode].close()
        w = self._spawn(mode)
        w.hello = w.read("start-up")
        w.pause()
        self.workers[mode] = self.replicas[mode][0] = w

    def stop(self) -> None:
        for w in self._all_workers():
            w.close()
        if self.sim is not None:
            self.sim.close()
        otlp = getattr(self, "otlp", None)
        if otlp is not None:
            # After the workers' shutdown flushed their batches: what the receiver got.
            try:
                self.result["otlp_received"] = otlp.call("counts")
            except Exception as exc:
                self.result["otlp_received"] = {"error": str(exc)}
            otlp.close()

    def sim_call(self, cmd: str, **kw: Any) -> Any:
        assert self.sim is not None
        return self.sim.call(cmd, **kw)

    def run_on(self, mode: str, cmd: str, replica: int = 0, **kw: Any) -> Any:
        """Run one command on one worker (a mode's ``replica``-th process) with every other
        worker stopped."""
        w = self.replicas[mode][replica]
        for other in self._all_workers():
            if other is not w:
                other.pause()
        try:
            return w.call(cmd, **kw)
        finally:
            w.pause()

    # -- phases -------------------------------------------------------------------------------
    def phase_latency(self) -> None:
        a = self.a
        modes = list(self.workers)
        rounds: dict[str, dict[str, list[float]]] = {
            m: {"median": [], "p99": [], "thread_cpu_us": [], "process_cpu_us": [], "pid": []} for m in modes
        }
        order_log = []
        rpc0 = self.sim_call("counters")["rpcs_total"]
        q0 = self._queries_so_far(modes)
        self.raw_lat = {m: [] for m in modes}
        t_start = time.perf_counter()
        for r in range(a.rounds):
            order = modes[:]
            self.rng.shuffle(order)
            order_log.append(order)
            for m in order:
                # Round r runs every mode's replica r mod K: each round compares processes of
                # the same hash seed, and the rounds spread over K processes per mode.
                res = self.run_on(m, "latency", replica=r % a.replicas, n=a.queries)
                rounds[m]["pid"].append(self.replicas[m][r % a.replicas].hello["pid"])
                lat = [x / 1e6 for x in res["lat_ns"]]
                rounds[m]["thread_cpu_us"].append(res["thread_cpu_ns"] / 1e3)
                rounds[m]["process_cpu_us"].append(res["process_cpu_ns"] / 1e3)
                rounds[m]["median"].append(median(lat))
                rounds[m]["p99"].append(percentile(lat, 99))
                self.raw_lat[m].extend(lat)
            if (r + 1) % max(1, a.rounds // 5) == 0:
                self.log(
                    f"latency round {r + 1}/{a.rounds}: "
                    + "  ".join(f"{m} {rounds[m]['median'][-1]:.3f}" for m in modes)
                )
        elapsed = time.perf_counter() - t_start
        rpc1 = self.sim_call("counters")["rpcs_total"]
        q1 = self._queries_so_far(modes)
        dq = q1 - q0
        out: dict[str, Any] = {
            "rounds": a.rounds,
            "replicas": a.replicas,
            "queries_per_round": a.queries,
            "seconds": elapsed,
            "order": order_log,
            "rpcs_per_query": (rpc1 - rpc0) / dq if dq else None,
            "modes": {},
        }
        base = rounds.get("bare")
        for m in modes:
            med, p99 = rounds[m]["median"], rounds[m]["p99"]
            entry: dict[str, Any] = {
                "median_ms": median(med),
                "p99_ms": percentile(self.raw_lat[m], 99),
                "round_median_ms": med,
                "round_p99_ms": p99,
                "round_pid": rounds[m]["pid"],
                "round_median_spread_ms": spread(med),
                "round_p99_spread_ms": spread(p99),
                "distribution_ms": distribution(self.raw_lat[m]),
                "thread_cpu_us_per_query": spread(rounds[m]["thread_cpu_us"]),
                "process_cpu_us_per_query": spread(rounds[m]["process_cpu_us"]),
            }
            if base is not None:
                for kind in ("thread_cpu_us", "process_cpu_us"):
                    diffs = [x - b for x, b in zip(rounds[m][kind], base[kind])]
                    entry[f"added_{kind}_per_query"] = spread(diffs)
                ratios = [x / b for x, b in zip(med, base["median"])]
                p99r = [x / b for x, b in zip(p99, base["p99"])]
                entry["ratio_to_bare"] = {
                    "median": median(ratios),
                    "spread": spread(ratios),
                    "per_round": ratios,
                    "p99_median_of_rounds": median(p99r),
                }
                entry["added_median_pct"] = (median(ratios) - 1.0) * 100.0
                entry["p99_ratio_to_bare"] = entry["p99_ms"] / percentile(self.raw_lat["bare"], 99)
            out["modes"][m] = entry
        self.result["latency"] = out
        # Memory after the same number of latency queries in every worker.
        self.result["rss_after_latency"] = {m: self.run_on(m, "rss", uss=True) for m in modes}

    def _queries_so_far(self, modes: Sequence[str]) -> int:
        """Queries run by every replica of ``modes`` so far."""
        return sum(
            self.run_on(m, "rss", replica=i)["queries"] for m in modes for i in range(len(self.replicas[m]))
        )

    def phase_throughput(self) -> None:
        a = self.a
        modes = [m for m in self.workers]
        out: dict[str, Any] = {"seconds_per_round": a.tp_seconds, "rounds": a.tp_rounds}
        for threads in a.threads:
            per: dict[str, list[float]] = {m: [] for m in modes}
            errors = {m: 0 for m in modes}
            for _ in range(a.tp_rounds):
                order = modes[:]
                self.rng.shuffle(order)
                for m in order:
                    res = self.run_on(m, "throughput", threads=threads, seconds=a.tp_seconds)
                    per[m].append(res["queries"] / res["elapsed"])
                    errors[m] += res["errors"]
            t_out: dict[str, Any] = {}
            for m in modes:
                t_out[m] = {"qps": median(per[m]), "round_qps": per[m], "errors": errors[m]}
                if "bare" in per:
                    ratios = [x / b for x, b in zip(per[m], per["bare"])]
                    t_out[m]["ratio_to_bare"] = {
                        "median": median(ratios),
                        "spread": spread(ratios),
                        "per_round": ratios,
                    }
            out[f"threads_{threads}"] = t_out
            self.log(
                f"throughput threads={threads}: " + "  ".join(f"{m} {t_out[m]['qps']:.0f}/s" for m in modes)
            )
        self.result["throughput"] = out

    def phase_render(self) -> None:
        out: dict[str, Any] = {}
        for m in self.workers:
            if m not in E6O_MODES:
                continue
            res = self.run_on(m, "render", n=self.a.render_n)
            entry: dict[str, Any] = {}
            if "render_ns" in res:
                ms = [x / 1e6 for x in res["render_ns"]]
                entry.update(in_process_ms=spread(ms), bytes=res["bytes"])
            else:
                entry["in_process_error"] = res.get("error")
            port = self.workers[m].hello.get("prometheus_port")
            if port:
                w = self.workers[m]
                self.resume_only(m)
                try:
                    times = []
                    series = 0
                    for _ in range(self.a.render_n // 4 or 1):
                        ts, te, body = scrape(port)
                        times.append((te - ts) / 1e6)
                        series = count_series(body)
                    entry.update(http_scrape_ms=spread(times), series=series)
                finally:
                    w.pause()
            out[m] = entry
        self.result["render"] = out

    def resume_only(self, mode: str) -> None:
        chosen = self.workers[mode]
        for w in self._all_workers():
            if w is chosen:
                w.resume()
            else:
                w.pause()

    def phase_switch(self) -> None:
        out: dict[str, Any] = {}
        for m in self.workers:
            if m not in E6O_MODES:
                continue
            port = self.workers[m].hello.get("prometheus_port")
            if not port:
                out[m] = {"error": "no /metrics port known"}
                continue
            hooks = [self._switch_once(m, port) for _ in range(self.a.switch_reps)]
            oob = [
                self._oob_once(m, port, to)
                for _ in range(self.a.oob_reps // 2 or 0)
                for to in ("green", "blue")
            ]
            entry: dict[str, Any] = {"hooks": _summ_switch(hooks), "hooks_raw": hooks}
            if oob:
                entry["watcher"] = _summ_switch(oob)
                entry["watcher"]["watcher_interval_s"] = WATCHER_INTERVAL_S
                entry["watcher_raw"] = oob
            out[m] = entry
            self.log(f"switch visibility {m}: hooks {entry['hooks']}")
        self.result["switch_visibility"] = out

    def _switch_once(self, mode: str, port: int) -> dict[str, Any]:
        """A graceful switch: announce, one query (the connector applies it at clear), complete.

        The worker stamps the moment the connector's cache changed into a shared page; this
        process polls the page every ~50 us and then scrapes /metrics in a tight loop.
        """
        fd, flag = tempfile.mkstemp(
            prefix="e6o-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        try:
            os.write(fd, b"\0" * 16)
            mm = mmap.mmap(fd, 16)
            to = self.sim_call("announce")["pending"]
            self.resume_only(mode)
            w = self.workers[mode]
            w.send("switch", flag_path=flag)
            deadline = time.monotonic() + 10.0
            t0 = 0
            while time.monotonic() < deadline:
                t0 = struct.unpack_from("<q", mm, 0)[0]
                if t0:
                    break
                time.sleep(0.00005)
            scrapes = scrape_until(port, to, timeout_s=5.0) if t0 else []
            res = w.read("switch")
            w.pause()
            mm.close()
        finally:
            os.close(fd)
            os.unlink(flag)
            self.sim_call("complete")
        if not t0:
            return {"visible": False, "error": "the connector did not apply the switch", "worker": res}
        return _lag(t0, to, scrapes)

    def _oob_once(self, mode: str, port: int, to: str) -> dict[str, Any]:
        """Out-of-band: the cache changes behind every hook; the watcher must notice."""
        self.resume_only(mode)
        w = self.workers[mode]
        res = w.call("oob_switch", to=to)
        scrapes = scrape_until(port, to, timeout_s=3 * WATCHER_INTERVAL_S + 2.0)
        w.pause()
        return _lag(int(res["t0"]), to, scrapes)

    def phase_watcher_cpu(self) -> None:
        out: dict[str, Any] = {}
        for m in self.workers:
            if m in E6O_MODES:
                res = self.run_on(m, "watcher_cpu", seconds=self.a.watcher_seconds)
                if "cpu_s" in res:
                    # psutil's per-thread times tick in 10 ms steps; the watcher's own
                    # time.thread_time() count is exact, so it is the figure reported.
                    res["psutil_cpu_ms_per_s"] = 1000.0 * res["cpu_s"] / res["wall_s"]
                    own = res.get("self_reported_cpu_s")
                    res["cpu_ms_per_s"] = (
                        1000.0 * own / res["wall_s"] if own is not None else res["psutil_cpu_ms_per_s"]
                    )
                out[m] = res
        self.result["watcher_cpu"] = out

    def phase_rss(self) -> None:
        """RSS over ``--rpcs`` RPCs, bare and e6o-full alternating in chunks."""
        modes = [m for m in ("bare", "e6o-full", "e6o-prom") if m in self.workers and m in self.a.rss_modes]
        total_q = max(1, self.a.rpcs // RPCS_PER_QUERY)
        chunks = max(2, min(self.a.rss_samples, total_q))
        per_chunk = max(1, total_q // chunks)
        series: dict[str, list[tuple[int, int]]] = {m: [] for m in modes}
        t0 = time.perf_counter()
        #: Each worker's RSS just before the agent (after the application's own OpenTelemetry
        #: SDK set-up in e6o-full; the worker's start for bare), to attribute growth to it.
        base: dict[str, int] = {}
        for m in modes:
            r = self.run_on(m, "rss")
            series[m].append((0, r["rss"]))
            base[m] = r["rss_before_agent"] or r["rss_start"]
        for c in range(chunks):
            for m in modes:
                r = self.run_on(m, "run", n=per_chunk)
                series[m].append(((c + 1) * per_chunk * RPCS_PER_QUERY, r["rss"]))
            if (c + 1) % max(1, chunks // 5) == 0:
                self.log(
                    f"rss chunk {c + 1}/{chunks}: "
                    + "  ".join(f"{m} {series[m][-1][1] / 2**20:.1f} MiB" for m in modes)
                )
        out: dict[str, Any] = {
            "rpcs": per_chunk * chunks * RPCS_PER_QUERY,
            "seconds": time.perf_counter() - t0,
            "modes": {},
        }
        for m in modes:
            pts = series[m]
            # Slope after the first fifth (allocator and caches settle first).
            tail = pts[len(pts) // 5 :]
            slope = linear_slope([x for x, _ in tail], [y for _, y in tail])
            out["modes"][m] = {
                "samples": pts,
                "rss_start_mib": pts[0][1] / 2**20,
                "rss_end_mib": pts[-1][1] / 2**20,
                "slope_mib_per_1m_rpcs": slope * 1e6 / 2**20,
                "growth_mib": (pts[-1][1] - tail[0][1]) / 2**20,
                "rss_before_agent_mib": base[m] / 2**20,
            }
        if "bare" in out["modes"]:
            bare = out["modes"]["bare"]
            bare_growth = bare["rss_end_mib"] - bare["rss_before_agent_mib"]
            for m in modes:
                if m != "bare":
                    mm = out["modes"][m]
                    # Whole process against the bare process: includes what the application
                    # itself set up in that mode (e6o-full: an OpenTelemetry SDK).
                    mm["added_rss_end_mib"] = mm["rss_end_mib"] - bare["rss_end_mib"]
                    # The agent's share: this worker's growth from just before instrument()
                    # to the end, less the bare worker's growth over the same work.
                    # In these workers, which also ran every earlier phase (32 threads among
                    # them); the target is judged in fresh workers (phase_rss_fresh).
                    mm["agent_rss_end_mib"] = mm["rss_end_mib"] - mm["rss_before_agent_mib"] - bare_growth
        self.result["rss"] = out

    def phase_rss_fresh(self) -> None:
        """The agent's RSS in fresh processes after the query workload alone.

        The memory phase's workers also ran the earlier phases, and the 32-thread throughput
        phase raises every worker's high-water mark, an instrumented one's more (a pass-through
        wrapper with no recording at all does that too): fresh bare and e6o-full workers run
        the same single-threaded queries, then their RSS is compared as in the memory phase.
        """
        modes = [m for m in ("bare", "e6o-full") if m in self.workers]
        if modes != ["bare", "e6o-full"]:
            return
        n = max(1, self.a.rpcs // RPCS_PER_QUERY // 2)
        for m in modes:
            self.restart(m)
        end = {}
        for m in modes:
            self.run_on(m, "run", n=n)
            end[m] = self.run_on(m, "rss")
        bare, full = end["bare"], end["e6o-full"]
        agent = ((full["rss"] - full["rss_before_agent"]) - (bare["rss"] - bare["rss_start"])) / 2**20
        self.result["rss_fresh"] = {
            "queries": n + self.a.warmup,
            "bare": bare,
            "e6o-full": full,
            "agent_rss_mib": agent,
        }

    def phase_series(self) -> None:
        m = (
            "e6o-full"
            if "e6o-full" in self.workers
            else next((x for x in self.workers if x in E6O_MODES), None)
        )
        if m is None:
            return
        port = self.workers[m].hello.get("prometheus_port")
        w = self.workers[m]

        def snapshot() -> dict[str, Any]:
            self.resume_only(m)
            snap: dict[str, Any] = {}
            if port:
                snap["prometheus_series"] = count_series(scrape(port)[2])
            # OpenTelemetry: wait for the next periodic export, then count its points.
            c = w.call("counts")["mode"]
            if "otel_exports" in c:
                n0 = c["otel_exports"]
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    c = w.call("counts")["mode"]
                    if c["otel_exports"] > n0 + 1:
                        break
                snap["otel_points"] = c["otel_points_last_export"]
            w.pause()
            return snap

        before = snapshot()
        t = time.perf_counter()
        done = 0
        step = 10_000
        while done < self.a.distinct:
            n = min(step, self.a.distinct - done)
            self.run_on(m, "run", n=n, distinct_from=1_000_000 + done)
            done += n
        after = snapshot()
        self.result["series"] = {
            "mode": m,
            "distinct_queries": self.a.distinct,
            "seconds": time.perf_counter() - t,
            "before": before,
            "after": after,
        }

    def phase_hotpath(self) -> None:
        """Microbenchmarks of the hot path pieces (benchmarks/hotpath.py), all workers stopped."""
        if self.result.get("skipped_modes", {}).get("e6o-full"):
            return
        for w in self._all_workers():
            w.pause()
        q_ms = self.result.get("latency", {}).get("modes", {}).get("bare", {}).get("median_ms", 2.0)
        path = self.a.out + ".hotpath.tmp"
        argv = [self.py, os.path.join(HERE, "hotpath.py"), "--json", path, "--query-ms", str(q_ms)]
        if self.a.quick:
            argv.append("--quick")
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(path) as f:
            self.result["hotpath_ns"] = json.load(f)
        os.unlink(path)

    # -- the other paths users run (issue 17) --------------------------------------------------
    def _path_modes(self) -> list[str]:
        return [m for m in PATH_MODES if m in self.workers]

    def _warm_up(self, cmd: str, **kw: Any) -> None:
        """``cmd`` once on every replica of every path mode, untimed."""
        for m in self._path_modes():
            for i in range(len(self.replicas[m])):
                self.run_on(m, cmd, replica=i, **kw)

    def _alternate(
        self, variants: Sequence[tuple[str, str, dict[str, Any]]], rounds: int, what: str
    ) -> dict[str, dict[str, list[Any]]]:
        """Alternating rounds: each round runs every variant ``(name, command, kwargs)`` once on
        every path mode, the modes in a fresh random order per variant. Replies by variant and
        mode, one per round."""
        modes = self._path_modes()
        out: dict[str, dict[str, list[Any]]] = {v: {m: [] for m in modes} for v, _, _ in variants}
        for r in range(rounds):
            for name, cmd, kw in variants:
                order = modes[:]
                self.rng.shuffle(order)
                for m in order:
                    out[name][m].append(self.run_on(m, cmd, replica=r % self.a.replicas, **kw))
            self.log(f"{what} round {r + 1}/{rounds}")
        return out

    @staticmethod
    def _vs_bare(per_round: dict[str, list[float]], key: str) -> dict[str, Any]:
        """Per mode: the median of ``per_round`` values and, per round, the ratio to bare."""
        out: dict[str, Any] = {}
        base = per_round.get("bare")
        for m, vals in per_round.items():
            e: dict[str, Any] = {key: median(vals), f"round_{key}": vals}
            if base is not None and m != "bare":
                ratios = [x / b for x, b in zip(vals, base)]
                e["ratio_to_bare"] = {"median": median(ratios), "spread": spread(ratios), "per_round": ratios}
                e["added_pct"] = (median(ratios) - 1.0) * 100.0
            out[m] = e
        return out

    def phase_large(self) -> None:
        """Large results: ``--large-rows`` rows x 10 columns, fetchall and fetchmany(1000), sync
        and async; per-query wall time, ratios to bare per round; e6observe's calls per fetch."""
        rows = self.a.large_rows
        variants: list[tuple[str, str, dict[str, Any]]] = [
            ("sync_fetchall", "large", {"rows": rows, "style": "fetchall"}),
            ("sync_fetchmany", "large", {"rows": rows, "style": "fetchmany"}),
        ]
        if self._aio_ok():
            variants += [
                ("async_fetchall", "large_aio", {"rows": rows, "style": "fetchall"}),
                ("async_fetchmany", "large_aio", {"rows": rows, "style": "fetchmany"}),
            ]
        for _, cmd, kw in variants:  # warm-up: the simulator builds the result once
            self._warm_up(cmd, **kw)
        t0 = time.perf_counter()
        raw = self._alternate(variants, self.a.path_rounds, "large")
        out: dict[str, Any] = {
            "rows": rows,
            "columns": 10,
            "batch_rows": SIM_BATCH_ROWS,
            "rounds": self.a.path_rounds,
            "variants": {},
        }
        for name, per in raw.items():
            ms = {m: [median(r["lat_ns"]) / 1e6 for r in res] for m, res in per.items()}
            out["variants"][name] = self._vs_bare(ms, "median_ms")
            cpu = {m: [r["process_cpu_ns"] / 1e6 for r in res] for m, res in per.items()}
            for m, e in self._vs_bare(cpu, "process_cpu_ms").items():
                out["variants"][name][m]["cpu"] = e
            # The querying thread alone (the event loop's, for async): what e6observe adds to
            # the application's call, without the background threads (gRPC's, the exporters').
            th = {m: [r["thread_cpu_ns"] / 1e6 for r in res] for m, res in per.items()}
            for m, e in self._vs_bare(th, "thread_cpu_ms").items():
                out["variants"][name][m]["thread_cpu"] = e
        out["seconds"] = time.perf_counter() - t0
        if "e6o-full" in self.workers:
            cc = self.run_on("e6o-full", "call_count", rows=rows)
            batches = -(-rows // SIM_BATCH_ROWS)
            extra = cc["large_fetchall"] - cc["select1"]
            # The 1-row query fetches one batch (and the empty one that ends it); the large one
            # ``batches`` (and the empty one): what grows with the result is per batch.
            per_batch = extra / max(1, batches - 1)
            # A per-row Python call would make the fetch cost at least one call per row; the
            # whole fetch costs far fewer calls than it has rows, all of them per batch (the
            # guard test shows 10 and 100 rows in one batch cost the same calls).
            cc.update(
                batches=batches,
                rows=rows,
                calls_per_extra_batch=per_batch,
                calls_over_rows=cc["large_fetchall"] / rows,
                calls_per_row=cc["large_fetchall"] // rows,
            )
            out["call_count"] = cc
            self.log(
                f"large: e6observe calls per {rows}-row fetchall {cc['large_fetchall']} "
                f"(SELECT 1: {cc['select1']}; {per_batch:.2f} per extra batch)"
            )
        self.result["large"] = out

    def _aio_ok(self) -> bool:
        return sys.version_info >= (3, 11)

    def phase_async(self) -> None:
        """64 concurrent queries on one event loop: own connections, and an async pool."""
        if not self._aio_ok():
            self.result["async"] = {"skipped": "the async API needs Python 3.11+"}
            return
        kw = {"tasks": self.a.async_tasks, "seconds": self.a.path_seconds}
        variants = [
            ("connections", "aio_concurrent", dict(kw)),
            ("pool", "aio_concurrent", dict(kw, pool=True)),
        ]
        for _, cmd, k in variants:  # warm-up: connections opened, untimed
            self._warm_up(cmd, **dict(k, seconds=0.2))
        self.result["async"] = self._throughput_phase(variants, "async")

    def phase_pool(self) -> None:
        """``ConnectionPool`` shared by ``--pool-threads`` threads."""
        k = {"threads": self.a.pool_threads, "seconds": self.a.path_seconds}
        self._warm_up("pool_threads", **dict(k, seconds=0.2))
        self.result["pool"] = self._throughput_phase([("threads", "pool_threads", k)], "pool")

    def _throughput_phase(
        self, variants: Sequence[tuple[str, str, dict[str, Any]]], what: str
    ) -> dict[str, Any]:
        raw = self._alternate(variants, self.a.path_rounds, what)
        out: dict[str, Any] = {
            "rounds": self.a.path_rounds,
            "seconds_per_round": self.a.path_seconds,
            "variants": {},
        }
        for name, per in raw.items():
            qps = {m: [r["queries"] / r["elapsed"] for r in res] for m, res in per.items()}
            med = {
                m: [median(r["lat_ns"]) / 1e6 if r["lat_ns"] else float("nan") for r in res]
                for m, res in per.items()
            }
            cpu = {m: [r["process_cpu_ns"] / 1e3 for r in res] for m, res in per.items()}
            lat = self._vs_bare(med, "median_ms")
            tp = self._vs_bare(qps, "qps")
            cp = self._vs_bare(cpu, "process_cpu_us_per_query")
            v: dict[str, Any] = {}
            for m in per:
                v[m] = {
                    "latency": lat[m],
                    "throughput": tp[m],
                    "cpu": cp[m],
                    "errors": sum(r["errors"] for r in per[m]),
                }
            out["variants"][name] = v
            self.log(
                f"{what} {name}: "
                + "  ".join(f"{m} {tp[m]['qps']:.0f}/s {lat[m]['median_ms']:.3f} ms" for m in per)
            )
        return out

    def phase_startup(self) -> None:
        """``import e6observe; instrument()`` and ``uninstrument()`` in fresh processes
        (benchmarks/startup.py), against the connector's own import."""
        path = self.a.out + ".startup.tmp"
        argv = [
            self.py,
            os.path.join(HERE, "startup.py"),
            "--json",
            path,
            "--rounds",
            str(self.a.startup_rounds),
        ]
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(path) as f:
            self.result["startup"] = json.load(f)
        os.unlink(path)

    def phase_multiproc(self) -> None:
        """Multi-process mode (benchmarks/multiproc.py): the merge of ``--mp-workers`` real
        workers' state files and a worker's write cost per flush. The path workers are stopped
        meanwhile."""
        for w in self._all_workers():
            w.pause()
        path = self.a.out + ".multiproc.tmp"
        argv = [
            self.py,
            os.path.join(HERE, "multiproc.py"),
            "--json",
            path,
            "--workers",
            str(self.a.mp_workers),
            "--queries",
            str(self.a.mp_queries),
        ]
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(path) as f:
            self.result["multiproc"] = json.load(f)
        os.unlink(path)

    # -- results ------------------------------------------------------------------------------
    def finish(self) -> None:
        for m in self.workers:
            try:
                self.result.setdefault("mode_counts", {})[m] = self.run_on(m, "counts")
            except Exception as exc:
                self.result.setdefault("mode_counts", {})[m] = {"error": str(exc)}
        self.result["targets"] = evaluate_targets(self.result)


# ----------------------------------------------------------------------------------------------
# /metrics helpers

_ACTIVE = re.compile(r'^e6data_strategy_active\{[^}]*strategy="(\w+)"[^}]*\}\s+1(?:\.0)?\s*$', re.M)


def scrape(port: int) -> tuple[int, int, str]:
    """GET /metrics: (start ns, end ns, body), CLOCK_MONOTONIC."""
    ts = time.monotonic_ns()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode("utf-8", "replace")
    finally:
        c.close()
    return ts, time.monotonic_ns(), body


def active_strategy(body: str) -> Optional[str]:
    m = _ACTIVE.search(body)
    return m.group(1) if m else None


def count_series(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def scrape_until(port: int, want: str, timeout_s: float) -> list[tuple[int, int, Optional[str]]]:
    """Scrape in a tight loop until /metrics shows ``want`` active (or the timeout)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ts, te, body = scrape(port)
        seen = active_strategy(body)
        out.append((ts, te, seen))
        if seen == want:
            break
    return out


def _lag(t0: int, want: str, scrapes: Sequence[tuple[int, int, Optional[str]]]) -> dict[str, Any]:
    stale = sum(1 for ts, _, s in scrapes if s != want and ts >= t0)
    hit = next(((ts, te) for ts, te, s in scrapes if s == want), None)
    if hit is None:
        return {"visible": False, "stale_scrapes": stale}
    return {
        "visible": True,
        "stale_scrapes": stale,
        "first_fresh_scrape_start_ms": (hit[0] - t0) / 1e6,
        "first_fresh_scrape_end_ms": (hit[1] - t0) / 1e6,
    }


def _summ_switch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [i for i in items if i.get("visible")]
    out: dict[str, Any] = {
        "n": len(items),
        "visible": len(ok),
        "stale_scrapes": sum(i.get("stale_scrapes", 0) for i in items),
    }
    if ok:
        out["start_ms"] = spread([i["first_fresh_scrape_start_ms"] for i in ok])
        out["end_ms"] = spread([i["first_fresh_scrape_end_ms"] for i in ok])
    return out


# ----------------------------------------------------------------------------------------------
# targets, machine, plot


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    T = TARGETS
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, met: Optional[bool]) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    lat = r.get("latency", {}).get("modes", {})
    full = lat.get("e6o-full", {}).get("added_median_pct")
    otel = lat.get("otel-grpc", {}).get("added_median_pct")
    if full is not None:
        add(
            "e6o-full added median latency (%)",
            round(full, 2),
            f"<= {T['added_median_pct_max']}",
            full <= T["added_median_pct_max"],
        )
    spans = r.get("mode_counts", {}).get("otel-grpc", {}).get("mode", {}).get("spans_ended")
    if full is not None and otel is not None and spans == 0:
        # The reference recorded no span: it measured a no-op tracer, not OpenTelemetry.
        add(
            "e6o-full added / otel-grpc added",
            None,
            f"< {T['fraction_of_otel_added_max']} (invalid: otel-grpc ended no spans)",
            None,
        )
    elif full is not None and otel:
        frac = full / otel if otel > 0 else None
        add(
            "e6o-full added / otel-grpc added",
            None if frac is None else round(frac, 3),
            f"< {T['fraction_of_otel_added_max']}",
            None if frac is None else frac < T["fraction_of_otel_added_max"],
        )
    tp = r.get("throughput", {}).get("threads_32", {}).get("e6o-full", {}).get("ratio_to_bare")
    if tp:
        add(
            "threads=32 throughput e6o-full/bare",
            round(tp["median"], 4),
            f">= {T['throughput_ratio_32_min']}",
            tp["median"] >= T["throughput_ratio_32_min"],
        )
    sv = r.get("switch_visibility", {}).get("e6o-full", {}).get("hooks", {})
    if sv.get("n"):
        worst = sv.get("start_ms", {}).get("max")
        met = (
            sv["visible"] == sv["n"]
            and sv["stale_scrapes"] == 0
            and worst is not None
            and worst <= T["switch_visible_ms_max"]
        )
        add(
            "switch visible in /metrics (worst, ms; first scrape after the switch)",
            worst,
            f"<= {T['switch_visible_ms_max']} and no stale scrape",
            met,
        )
    fresh = r.get("rss_fresh")
    if fresh:
        agent = fresh["agent_rss_mib"]
        add(
            f"agent RSS added in e6o-full (MiB; fresh workers after {fresh['queries']} queries, "
            "from just before e6observe is imported, less bare's growth)",
            round(agent, 2),
            f"<= {T['added_rss_mib_max']}",
            agent <= T["added_rss_mib_max"],
        )
    rss = r.get("rss", {}).get("modes", {})
    if "e6o-full" in rss and "bare" in rss:
        add(
            "agent RSS at the end of the memory phase (MiB; workers that ran every earlier "
            "phase, 32 threads among them)",
            round(rss["e6o-full"]["agent_rss_end_mib"], 2),
            "(context)",
            None,
        )
        whole = rss["e6o-full"]["added_rss_end_mib"]
        add(
            "RSS e6o-full process vs bare process (MiB; includes the app's own OTel SDK set-up)",
            round(whole, 2),
            "(context)",
            None,
        )
        extra = rss["e6o-full"]["slope_mib_per_1m_rpcs"] - rss["bare"]["slope_mib_per_1m_rpcs"]
        add(
            f"RSS growth beyond bare (MiB per 1M RPCs, over {r['rss']['rpcs']} RPCs)",
            round(extra, 3),
            f"<= {T['rss_growth_mib_per_1m_rpcs_max']}",
            extra <= T["rss_growth_mib_per_1m_rpcs_max"],
        )
    se = r.get("series")
    if se and "prometheus_series" in se["before"]:
        same = se["before"] == se["after"]
        add(
            f"series after {se['distinct_queries']} distinct queries",
            {"before": se["before"], "after": se["after"]},
            "unchanged",
            same,
        )
    rd = r.get("render", {}).get("e6o-full", {}).get("in_process_ms")
    if rd:
        add(
            "/metrics render, median ms (in process)",
            round(rd["median"], 3),
            f"<= {T['render_ms_max']}",
            rd["median"] <= T["render_ms_max"],
        )
    otlp = lat.get("e6o-otlp", {}).get("added_median_pct")
    ref = lat.get("otel-otlp", {}).get("added_median_pct")
    if otlp is not None:
        aa = lat.get("bare-ctl", {}).get("ratio_to_bare")
        aa_s = f"; A/A {aa['median']:.3f} IQR {aa['spread']['q1']:.3f}-{aa['spread']['q3']:.3f}" if aa else ""
        add(
            f"OTLP on: e6o-otlp added median latency (%){aa_s}",
            round(otlp, 2),
            f"<= {T['otlp_added_median_pct_max']}",
            otlp <= T["otlp_added_median_pct_max"],
        )
        if ref:
            frac = otlp / ref if ref > 0 else None
            add(
                f"OTLP on: e6o-otlp added / otel-otlp added (otel-otlp +{ref:.2f} %)",
                None if frac is None else round(frac, 3),
                f"< {T['otlp_fraction_of_otel_max']}",
                None if frac is None else frac < T["otlp_fraction_of_otel_max"],
            )
    deferred = lat.get("e6o-otlp-deferred", {}).get("added_median_pct")
    if deferred is not None:
        frac_s = f"; {deferred / ref:.3f} of otel-otlp's +{ref:.2f} %" if ref and ref > 0 else ""
        add(
            f"OTLP on, query_spans=deferred: e6o-otlp-deferred added median latency (%){frac_s}",
            round(deferred, 2),
            "(context)",
            None,
        )
    nospan = lat.get("e6o-otlp-nospan", {}).get("added_median_pct")
    if nospan is not None:
        add(
            "OTLP metrics and logs, no tracer: e6o-otlp-nospan added median latency (%)",
            round(nospan, 2),
            "(context)",
            None,
        )
    mpl = lat.get("e6o-mp", {}).get("added_median_pct")
    if mpl is not None:
        aa = lat.get("bare-ctl", {}).get("ratio_to_bare")
        aa_s = f"; A/A {aa['median']:.3f} IQR {aa['spread']['q1']:.3f}-{aa['spread']['q3']:.3f}" if aa else ""
        add(
            f"multi-process worker: e6o-mp added median latency (%){aa_s}",
            round(mpl, 2),
            f"<= {T['mp_added_median_pct_max']}",
            mpl <= T["mp_added_median_pct_max"],
        )
    out.extend(evaluate_path_targets(r))
    return out


def _aa(entry: dict[str, Any]) -> str:
    """The A/A control's ratio for a path entry: median [min-max] over rounds."""
    rt = entry.get("bare-ctl", {}).get("ratio_to_bare")
    if not rt:
        return ""
    sp = rt["spread"]
    return f"; A/A {rt['median']:.3f} [{sp['min']:.3f}-{sp['max']:.3f}]"


def evaluate_path_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Targets of the path phases (issue 17): large results, async, pools, start and stop."""
    T = TARGETS
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: str, met: Optional[bool]) -> None:
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    lg = r.get("large", {})
    for name, v in lg.get("variants", {}).items():
        full = v.get("e6o-full", {}).get("added_pct")
        if full is not None:
            add(
                f"large result {lg['rows']}x10 {name}: e6o-full added median (%){_aa(v)}",
                round(full, 2),
                f"<= {T['large_added_median_pct_max']}",
                full <= T["large_added_median_pct_max"],
            )
    cpu_figures = (
        ("cpu", "process CPU", "(context: CPU, less sensitive to other load than wall time)"),
        (
            "thread_cpu",
            "querying-thread CPU",
            "(context: the application's thread only, no background threads)",
        ),
    )
    for key, what, note in cpu_figures:
        for name, v in lg.get("variants", {}).items():
            cpu = v.get("e6o-full", {}).get(key, {}).get("added_pct")
            if cpu is not None:
                aa = {m: e[key] for m, e in v.items() if key in e}
                add(
                    f"large result {name}: e6o-full added {what} per query (%){_aa(aa)}",
                    round(cpu, 2),
                    note,
                    None,
                )
    cc = lg.get("call_count")
    if cc:
        add(
            f"large result: e6observe Python calls per row (fetchall of {cc['rows']} rows: "
            f"{cc['large_fetchall']} calls in all, {cc['calls_per_extra_batch']:.2f} per batch)",
            cc["calls_per_row"],
            f"<= {T['large_calls_per_row_max']}",
            cc["calls_per_row"] <= T["large_calls_per_row_max"],
        )
    for phase, label in (("async", "async 64 tasks"), ("pool", "ConnectionPool")):
        for name, v in r.get(phase, {}).get("variants", {}).items():
            full = v.get("e6o-full")
            if not full:
                continue
            lat_v = {m: e["latency"] for m, e in v.items()}
            tp_v = {m: e["throughput"] for m, e in v.items()}
            added = full["latency"].get("added_pct")
            lim = T["async_added_median_pct_max" if phase == "async" else "pool_added_median_pct_max"]
            if added is not None:
                add(
                    f"{label} ({name}): e6o-full added median latency (%){_aa(lat_v)}",
                    round(added, 2),
                    f"<= {lim}",
                    added <= lim,
                )
            cpu = full.get("cpu", {}).get("added_pct")
            if cpu is not None:
                add(
                    f"{label} ({name}): e6o-full added process CPU per query (%)"
                    f"{_aa({m: e['cpu'] for m, e in v.items()})}",
                    round(cpu, 2),
                    "(context)",
                    None,
                )
            tp = full["throughput"].get("ratio_to_bare")
            if tp:
                met = tp["median"] >= T["async_throughput_ratio_min"] if phase == "async" else None
                add(
                    f"{label} ({name}): throughput e6o-full/bare{_aa(tp_v)}",
                    round(tp["median"], 4),
                    f">= {T['async_throughput_ratio_min']}" if phase == "async" else "(context)",
                    met,
                )
    mp = r.get("multiproc")
    if mp:
        for k, label in (("cold_merge_ms", "first scrape"), ("changed_merge_ms", "every file changed")):
            add(
                f"multi-process: merge of {mp['workers']} workers' files, {label} (median ms)",
                round(mp[k]["median"], 2),
                f"<= {T['mp_merge_ms_max']}",
                mp[k]["median"] <= T["mp_merge_ms_max"],
            )
        add(
            "multi-process: a worker's state write per flush (median ms)",
            round(mp["write_ms"]["median"], 3),
            "(reported)",
            None,
        )
    st = r.get("startup", {}).get("configs", {})
    for cfg, e in st.items():
        add(
            f"start ({cfg}): import e6observe + instrument(), ms beyond the connector's import",
            round(e["instrument_ms"]["median"], 1),
            f"<= {T['startup_ms_max']}",
            e["instrument_ms"]["median"] <= T["startup_ms_max"],
        )
        add(
            f"start ({cfg}): RSS added by import + instrument(), MiB",
            round(e["rss_added_mib"]["median"], 2),
            f"<= {T['startup_rss_mib_max']}",
            e["rss_added_mib"]["median"] <= T["startup_rss_mib_max"],
        )
        add(
            f"stop ({cfg}): uninstrument() with the endpoint running, ms (worst of rounds)",
            round(e["uninstrument_ms"]["max"], 1),
            f"<= {T['uninstrument_ms_max']}",
            e["uninstrument_ms"]["max"] <= T["uninstrument_ms_max"],
        )
    return out


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(p: str) -> Optional[str]:
        try:
            return version(p)
        except PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True, timeout=5
        ).stdout.strip()
    except Exception:
        commit = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": os.getloadavg(),
        "versions": {
            p: ver(p)
            for p in (
                "e6data-python-connector",
                "grpcio",
                "protobuf",
                "opentelemetry-sdk",
                "opentelemetry-instrumentation-grpc",
                "prometheus_client",
                "e6observe",
            )
        },
        "git_commit": commit,
    }


def plot(r: dict[str, Any], raw: dict[str, list[float]], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"matplotlib unavailable ({exc}); pip install 'e6observe[bench]'"
    modes = [m for m in raw if raw[m]]
    if not modes:
        return "no latency data"
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    hi = max(percentile(raw[m], 99.5) for m in modes)
    lo = min(percentile(raw[m], 0.5) for m in modes)
    for m in modes:
        xs = sorted(raw[m])
        n = len(xs)
        ax1.plot(xs, [(i + 1) / n for i in range(n)], label=m, lw=1.3)
    ax1.set_xlim(lo, hi)
    ax1.set_xlabel("per-query latency (ms)")
    ax1.set_ylabel("fraction of queries (ECDF)")
    ax1.set_title("latency distribution, all rounds")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    lat = r["latency"]["modes"]
    for m in modes:
        ax2.plot(
            range(1, len(lat[m]["round_median_ms"]) + 1),
            lat[m]["round_median_ms"],
            marker=".",
            lw=0.8,
            label=m,
        )
    ax2.set_xlabel("round")
    ax2.set_ylabel("median latency of the round (ms)")
    ax2.set_title("per-round medians (alternating rounds)")
    ax2.grid(alpha=0.3)
    others = [m for m in modes if m != "bare" and "ratio_to_bare" in lat[m]]
    if others:
        data = [[(x - 1) * 100 for x in lat[m]["ratio_to_bare"]["per_round"]] for m in others]
        ax3.boxplot(data, tick_labels=others) if _mpl_has_tick_labels(plt) else ax3.boxplot(
            data, labels=others
        )
        ax3.axhline(0, color="k", lw=0.8)
        ax3.axhline(
            TARGETS["added_median_pct_max"], color="g", ls="--", lw=0.8, label="target for e6o-full (3 %)"
        )
        ax3.set_ylabel("added median latency vs bare, same round (%)")
        ax3.set_title("per-round overhead")
        ax3.tick_params(axis="x", labelrotation=30)  # nine modes' names do not fit side by side
        ax3.legend(fontsize=8)
        ax3.grid(alpha=0.3)
    m = r.get("machine", {})
    fig.suptitle(
        f"e6observe benchmark - {m.get('cpu')} x{m.get('cores')}, Python "
        f"{m.get('python')}, connector {m.get('versions', {}).get('e6data-python-connector')}"
        f" - {r['latency']['rounds']} rounds x {r['latency']['queries_per_round']} queries"
        + (f", {r['latency']['replicas']} processes per mode" if r["latency"].get("replicas", 1) > 1 else ""),
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_paths(r: dict[str, Any], path: str) -> Optional[str]:
    """The path phases (large, async, pool): per-round added median time (%) of e6o-full and of
    the A/A control (bare-ctl) against bare, per path; throughput ratios of async and pool."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"matplotlib unavailable ({exc})"
    lat_rows: list[tuple[str, list[float]]] = []
    tp_rows: list[tuple[str, list[float]]] = []
    for name, v in r.get("large", {}).get("variants", {}).items():
        for m, tag in (("bare-ctl", "A/A"), ("e6o-full", "e6o")):
            rt = v.get(m, {}).get("ratio_to_bare")
            if rt:
                lat_rows.append((f"large {name}\n{tag}", [(x - 1) * 100 for x in rt["per_round"]]))
    for phase in ("async", "pool"):
        for name, v in r.get(phase, {}).get("variants", {}).items():
            for m, tag in (("bare-ctl", "A/A"), ("e6o-full", "e6o")):
                e = v.get(m, {})
                lr = e.get("latency", {}).get("ratio_to_bare")
                tr = e.get("throughput", {}).get("ratio_to_bare")
                if lr:
                    lat_rows.append((f"{phase} {name}\n{tag}", [(x - 1) * 100 for x in lr["per_round"]]))
                if tr:
                    tp_rows.append((f"{phase} {name}\n{tag}", tr["per_round"]))
    if not lat_rows:
        return "no path data"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(17, 5.6), gridspec_kw={"width_ratios": [3, 1]})
    kw = {"tick_labels" if _mpl_has_tick_labels(plt) else "labels": [n for n, _ in lat_rows]}
    ax1.boxplot([d for _, d in lat_rows], **kw)
    ax1.axhline(0, color="k", lw=0.8)
    ax1.axhline(1.0, color="g", ls="--", lw=0.8, label="target (1 %)")
    ax1.set_ylabel("added median time vs bare, same round (%)")
    ax1.set_title("large results, async, pool: per-round overhead (A/A = second bare process)")
    ax1.tick_params(axis="x", labelsize=7, labelrotation=35)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    if tp_rows:
        kw = {"tick_labels" if _mpl_has_tick_labels(plt) else "labels": [n for n, _ in tp_rows]}
        ax2.boxplot([d for _, d in tp_rows], **kw)
        ax2.axhline(1.0, color="k", lw=0.8)
        ax2.axhline(0.99, color="g", ls="--", lw=0.8, label="async target (0.99)")
        ax2.set_ylabel("throughput ratio to bare, same round")
        ax2.set_title("throughput")
        ax2.tick_params(axis="x", labelsize=7, labelrotation=35)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    m = r.get("machine", {})
    fig.suptitle(
        f"e6observe paths - {m.get('cpu')} x{m.get('cores')}, load "
        f"{m.get('load_avg_start', [0])[0]:.1f} at start",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _mpl_has_tick_labels(plt: Any) -> bool:
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return (major, minor) >= (3, 9)


def summary_lines(r: dict[str, Any]) -> list[str]:
    out = []
    lat = r.get("latency", {}).get("modes", {})
    if lat:
        out.append(f"{'mode':<10} {'median ms':>9} {'p99 ms':>8} {'ratio':>7} {'IQR of ratio':>16}")
        for m, e in lat.items():
            rt = e.get("ratio_to_bare")
            iqr = f"{rt['spread']['q1']:.3f}-{rt['spread']['q3']:.3f}" if rt else ""
            out.append(
                f"{m:<10} {e['median_ms']:>9.3f} {e['p99_ms']:>8.3f} "
                f"{(rt['median'] if rt else 1.0):>7.3f} {iqr:>16}"
            )
    for t in r.get("targets", []):
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        out.append(f"[{mark}] {t['target']}: {t['value']} (target {t['limit']})")
    return out


# ----------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: every phase, tiny sizes")
    ap.add_argument(
        "--long", action="store_true", help="memory over 1 M RPCs per mode and 100 k distinct queries"
    )
    ap.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated from {','.join(MODES)}; default: {','.join(DEFAULT_MODES)}",
    )
    ap.add_argument("--rounds", type=int, help="latency rounds (default 40)")
    ap.add_argument("--queries", type=int, help="queries per mode per round (default 250)")
    ap.add_argument("--warmup", type=int, help="untimed queries per worker at start (default 300)")
    ap.add_argument("--threads", default="1,32", help="throughput thread counts")
    ap.add_argument("--tp-rounds", type=int, help="throughput rounds per thread count (default 6)")
    ap.add_argument("--tp-seconds", type=float, help="seconds per throughput round (default 1.0)")
    ap.add_argument("--rpcs", type=int, help="RPCs per mode in the memory phase (default 120000)")
    ap.add_argument("--rss-samples", type=int, default=40, help="RSS samples in the memory phase")
    ap.add_argument("--rss-modes", default="bare,e6o-full")
    ap.add_argument("--distinct", type=int, help="distinct queries for the series count (10000)")
    ap.add_argument("--switch-reps", type=int, help="graceful switches per e6observe mode (20)")
    ap.add_argument("--oob-reps", type=int, help="out-of-band switches per e6observe mode (6)")
    ap.add_argument("--render-n", type=int, help="/metrics renders timed (200)")
    ap.add_argument("--watcher-seconds", type=float, help="seconds of watcher CPU sampling (5)")
    ap.add_argument("--sim-latency-ms", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="worker processes per mode (default 1); round r runs replica r mod K of every mode, "
        "replica i with PYTHONHASHSEED=i: a process's own luck (memory layout, hash seed) is "
        "spread over K processes instead of deciding a mode's whole run",
    )
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin the simulator to the first CPU and every worker to the second "
        "(default: on with 2+ CPUs and sched_setaffinity)",
    )
    ap.add_argument("--skip", default="", help="phases to skip: " + ",".join(PHASES))
    ap.add_argument(
        "--only", default="", help="run only these phases (comma-separated), e.g. large,async,pool,startup"
    )
    ap.add_argument("--large-rows", type=int, help="rows of the large result (default 100000)")
    ap.add_argument(
        "--path-rounds", type=int, help="alternating rounds of the large/async/pool phases (default 8)"
    )
    ap.add_argument("--path-seconds", type=float, help="seconds per async/pool round (default 1.0)")
    ap.add_argument("--async-tasks", type=int, default=64, help="concurrent async queries")
    ap.add_argument("--pool-threads", type=int, default=16, help="threads sharing the pool")
    ap.add_argument("--mp-workers", type=int, help="workers in the multi-process merge (32)")
    ap.add_argument("--mp-queries", type=int, help="queries per multi-process worker (200)")
    ap.add_argument(
        "--startup-rounds", type=int, help="fresh processes per start-up configuration (default 8)"
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--plot", default=os.path.join(HERE, "results", "latest.png"))
    a = ap.parse_args(argv)
    if a.quick and a.long:
        ap.error("--quick and --long exclude each other")
    preset = {  # standard, quick, long
        "rounds": (40, 1, 40),
        "queries": (250, 50, 250),
        "warmup": (300, 20, 300),
        "tp_rounds": (6, 1, 6),
        "tp_seconds": (1.0, 0.3, 1.0),
        "rpcs": (120_000, 600, 1_000_000),
        "distinct": (10_000, 100, 100_000),
        "switch_reps": (20, 2, 20),
        "oob_reps": (6, 2, 6),
        "render_n": (200, 8, 200),
        "watcher_seconds": (5.0, 0.5, 10.0),
        "large_rows": (100_000, 3_000, 100_000),
        "path_rounds": (8, 1, 8),
        "path_seconds": (1.0, 0.3, 1.0),
        "startup_rounds": (8, 1, 8),
        "mp_workers": (32, 3, 32),
        "mp_queries": (200, 20, 200),
    }
    idx = 1 if a.quick else 2 if a.long else 0
    for k, v in preset.items():
        if getattr(a, k) is None:
            setattr(a, k, v[idx])
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad:
        ap.error(f"unknown modes {bad}; choose from {list(MODES)}")
    if a.quick and a.threads == "1,32":
        a.threads = "1,4"
    a.threads = [int(x) for x in a.threads.split(",") if x]
    a.rss_modes = [m.strip() for m in a.rss_modes.split(",") if m.strip()]
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    bad = sorted((a.skip | only) - set(PHASES))
    if bad:
        ap.error(f"unknown phases {bad}; choose from {list(PHASES)}")
    if only:
        a.skip |= set(PHASES) - only
    if not 1 <= a.replicas <= 8:
        ap.error(f"--replicas must be 1 to 8, got {a.replicas}")
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    b = Bench(a)
    b.result["machine"] = machine()
    b.result["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    b.result["config"] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()}
    b.result["targets_defined"] = TARGETS
    t0 = time.perf_counter()
    try:
        b.start()
        fns = {
            "latency": b.phase_latency,
            "throughput": b.phase_throughput,
            "render": b.phase_render,
            "switch": b.phase_switch,
            "watcher": b.phase_watcher_cpu,
            "rss": b.phase_rss,
            "series": b.phase_series,
            "fresh-rss": b.phase_rss_fresh,
            "large": b.phase_large,
            "async": b.phase_async,
            "pool": b.phase_pool,
            "startup": b.phase_startup,
            "multiproc": b.phase_multiproc,
            "hotpath": b.phase_hotpath,
        }
        for name in PHASES:
            if name in a.skip:
                continue
            b.log(f"phase {name}")
            fns[name]()
        b.finish()
    finally:
        b.stop()
    b.result["seconds"] = time.perf_counter() - t0
    b.result["machine"]["load_avg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(b.result, f, indent=1)
    note = plot(b.result, b.raw_lat, a.plot) if "latency" in b.result and a.plot else None
    if a.plot and any(k in b.result for k in ("large", "async", "pool")):
        ppath = os.path.splitext(a.plot)[0] + "-paths.png"
        pnote = plot_paths(b.result, ppath)
        print(f"wrote {ppath}" if not pnote else f"paths plot skipped: {pnote}")
    for line in summary_lines(b.result):
        print(line)
    if "latency" not in b.result:
        note = "no latency phase"
    print(f"wrote {a.out}" + (f" and {a.plot}" if not note else f" (plot skipped: {note})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
