"""Chaos soak: the real connector under blue/green chaos, with e6observe counting along.

Run it as ``python -m tests.soak [flags]`` from the repository root (``./run soak`` does that);
``tests/test_soak.py`` runs a short form in CI. See docs/soak.md for what it checks and why.

What runs, for ``--duration`` seconds, in this process (the application):

* ``--threads`` worker threads, each with its own connector ``Connection`` (reopened every
  ``--reconnect-every`` queries and after an ``UNAVAILABLE``), running a fixed mix of queries
  (scalars, slices of the sample table, the whole table, ``COUNT(*)``, a failing query) and
  checking every row they get;
* ``e6observe.instrument()`` with its Prometheus endpoint on a free port (and the status routes
  beside it), and three readers of what it exports: a scraper of ``/metrics`` and ``/status``, a
  follower of the ``/events`` stream, and a recorder subscriber;
* a chaos thread that, every half ``--switch-every``, does the next step of the cycle
  *announced switch, injected RPC faults, abrupt flip, 456 storm* - plus ``--restarts``
  simulator restarts spread over the run;
* the connector's own account of its strategy writes (:class:`chaos.ConnectorSwitchLog`, one
  unused ``debug=True`` connection) - the reference for the switches it made;
* an RSS sampler.

The simulator runs in a child process (:class:`chaos.SimProcess`), so RSS measures the
application. At the end the invariants are checked and printed (human summary, then one JSON
object as the last line of stdout); the exit status is 1 if one of them failed, 2 if the soak
could not be set up. A watchdog (``faulthandler``) ends a hung run with a traceback dump.
"""

from __future__ import annotations

import argparse
import faulthandler
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

# Run as ``python -m tests.soak`` from the repository root. The test helpers import one another
# by module name, as under pytest (which puts tests/ on the path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402
from helpers import wait_for  # noqa: E402

MIB = 1024 * 1024
USER = "soak-{}@example.com"
PASSWORD = "soak-password"
#: details of every injected (non-456) fault; no other RPC failure carries this text.
INJECTED = "soak-injected"
#: (method, code) pairs the faults step cycles through. None of these codes is produced by the
#: simulator for any other reason, so e6observe's RPC histogram counts them exactly.
FAULTS: tuple[tuple[str, str], ...] = (
    ("prepareStatement", "RESOURCE_EXHAUSTED"),
    ("executeStatement", "ABORTED"),
    ("getResultMetadata", "DATA_LOSS"),
    ("getNextResultBatch", "RESOURCE_EXHAUSTED"),
    ("clearOrCancelQuery", "FAILED_PRECONDITION"),
)
#: Methods a 456 storm (``status: 456`` faults with no switch behind them) lands on.
STORM_METHODS = ("prepareStatement", "executeStatement", "getNextResultBatch", "authenticate")
CYCLE = ("announced", "faults", "abrupt", "storm")


# -- options ------------------------------------------------------------------------------------
@dataclass
class SoakOptions:
    duration: float = 300.0
    threads: int = 32
    switch_every: float = 4.0
    restarts: int = 1
    think_ms: float = 2.0
    reconnect_every: int = 50
    warmup: Optional[float] = None  # default: min(120, 0.4 * duration)
    rss_every: float = 2.0
    scrape_every: float = 2.0
    watcher_interval: float = 0.5
    event_capacity: int = 1024
    #: RSS trend bound (MiB per minute) over the samples after warm-up; judged only when the
    #: window after warm-up is at least ``rss_min_window`` seconds long.
    rss_slope_max: float = 2.0
    rss_min_window: float = 120.0
    #: Bound on RSS growth from the end of warm-up to the end (MiB), judged in every run.
    rss_growth_max: float = 128.0
    seed: int = 7
    json_path: Optional[str] = None

    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else min(120.0, 0.4 * self.duration)


def parse_args(argv: Optional[list[str]] = None) -> SoakOptions:
    d = SoakOptions()
    p = argparse.ArgumentParser(
        prog="python -m tests.soak", description="Chaos soak of e6observe with the real connector."
    )
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of load (300)")
    p.add_argument("--threads", type=int, default=d.threads, help="worker threads (32)")
    p.add_argument(
        "--switch-every",
        type=float,
        default=d.switch_every,
        help="seconds between blue/green switches; chaos steps every half (4)",
    )
    p.add_argument("--restarts", type=int, default=d.restarts, help="simulator restarts (1)")
    p.add_argument(
        "--think-ms", type=float, default=d.think_ms, help="mean pause between a worker's queries, ms (2)"
    )
    p.add_argument(
        "--reconnect-every",
        type=int,
        default=d.reconnect_every,
        help="queries per connection before a worker reopens it (50; 0: never)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of RSS samples ignored for the trend (min(120, 0.4 * duration))",
    )
    p.add_argument("--rss-every", type=float, default=d.rss_every, help="RSS sample period (2)")
    p.add_argument("--scrape-every", type=float, default=d.scrape_every, help="/metrics scrape period (2)")
    p.add_argument("--watcher-interval", type=float, default=d.watcher_interval)
    p.add_argument(
        "--event-capacity",
        type=int,
        default=d.event_capacity,
        help="e6observe event ring size (1024: small enough to evict in a soak)",
    )
    p.add_argument(
        "--rss-slope-max",
        type=float,
        default=d.rss_slope_max,
        help="max RSS trend after warm-up, MiB/min (2.0)",
    )
    p.add_argument(
        "--rss-min-window",
        type=float,
        default=d.rss_min_window,
        help="judge the RSS trend only over at least this many seconds (120)",
    )
    p.add_argument(
        "--rss-growth-max",
        type=float,
        default=d.rss_growth_max,
        help="max RSS growth after warm-up, MiB (128)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", dest="json_path", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.threads < 1 or a.switch_every <= 0 or a.restarts < 0:
        p.error("--duration, --switch-every must be > 0, --threads >= 1, --restarts >= 0")
    if a.threads > 256:
        p.error("--threads is at most 256 (the simulator serves 64 RPCs at once)")
    return SoakOptions(
        duration=a.duration,
        threads=a.threads,
        switch_every=a.switch_every,
        restarts=a.restarts,
        think_ms=max(0.0, a.think_ms),
        reconnect_every=max(0, a.reconnect_every),
        warmup=a.warmup,
        rss_every=max(0.2, a.rss_every),
        scrape_every=max(0.2, a.scrape_every),
        watcher_interval=a.watcher_interval,
        event_capacity=a.event_capacity,
        rss_slope_max=a.rss_slope_max,
        rss_min_window=a.rss_min_window,
        rss_growth_max=a.rss_growth_max,
        seed=a.seed,
        json_path=a.json_path,
    )


# -- small helpers ------------------------------------------------------------------------------
def _connector_cache() -> dict[str, Any]:
    from e6data_python_connector import e6data_grpc as g

    return g._local_strategy_cache  # type: ignore[no-any-return]


def cache_active() -> Any:
    return _connector_cache().get("active_strategy")


def _expected_table() -> list[list[Any]]:
    import datetime as dt

    from e6observe.sim import SAMPLE_ROWS, sample_row

    def conv(v: Any) -> Any:  # the connector returns time types as ISO strings
        if isinstance(v, dt.datetime):
            return v.strftime("%Y-%m-%dT%H:%M:%S") + f".{v.microsecond // 1000:03d}+00:00"
        if isinstance(v, dt.date):
            return v.isoformat()
        return v

    return [[conv(v) for v in sample_row(i)] for i in range(SAMPLE_ROWS)]


FAIL = object()  # the expected "result" of SELECT fail()


def pick_query(rng: random.Random, table: list[list[Any]]) -> tuple[str, Any]:
    """A query of the fixed mix and what it must return (FAIL: an INTERNAL error)."""
    r = rng.random()
    if r < 0.45:
        n = rng.randrange(1, 1_000_000)
        return f"SELECT {n}", [[n]]
    if r < 0.75:
        k = rng.randint(1, 300)
        return f"SELECT * FROM sample LIMIT {k}", table[:k]
    if r < 0.85:
        return "SELECT COUNT(*) FROM sample", [[len(table)]]
    if r < 0.95:
        return "SELECT * FROM sample", table
    return "SELECT fail()", FAIL


def classify(exc: BaseException) -> str:
    """A short, bounded name for what the application saw."""
    try:
        code = exc.code().name  # type: ignore[attr-defined]
        details = str(exc.details() or "")  # type: ignore[attr-defined]
    except Exception:
        return "python:" + type(exc).__name__
    if details == INJECTED:
        return "injected"
    if "status: 456" in details:
        return "456"
    if code == "INTERNAL" and "simulated query failure" in details:
        return "query_failure"
    if "Access denied" in details:
        return "access_denied"
    return "grpc:" + str(code)


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def samples(parsed: list[tuple[str, dict[str, str], float]], name: str) -> list[tuple[dict[str, str], float]]:
    return [(lab, v) for n, lab, v in parsed if n == name]


def rss_now() -> int:
    return chaos.rss_bytes()


# -- the application --------------------------------------------------------------------------
class Worker(threading.Thread):
    """One application thread: its own connection, the query mix, rows checked."""

    def __init__(self, idx: int, soak: Soak) -> None:
        super().__init__(name=f"soak-worker-{idx}", daemon=True)
        self.idx = idx
        self.soak = soak
        self.rng = random.Random(soak.opts.seed * 1000 + idx)
        # Written by this thread only (reads from others see a recent value).
        self.started = 0
        self.done = 0
        self.completed = 0  # execute + fetchall + clear succeeded
        self.wrong = 0  # ... but the rows (or the success itself) were wrong
        self.unexpected = 0  # "simulated query failure" for a query that should not fail
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.wrong_examples: list[str] = []
        self.connections = 0
        self.crash: Optional[str] = None

    def _connect(self) -> Any:
        from e6data_python_connector import e6data_grpc as g

        s = self.soak
        self.connections += 1
        return g.Connection(
            host=s.sim.host, port=s.sim.port, username=USER.format(self.idx), password=PASSWORD
        )

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported as an invariant failure, never silent
            self.crash = repr(exc)

    def _loop(self) -> None:
        s = self.soak
        stop = s.stop_workers
        think = s.opts.think_ms / 1000.0
        every = s.opts.reconnect_every
        conn: Any = None
        budget = 0
        try:
            while not stop.is_set():
                if conn is None or (every and budget <= 0):
                    if conn is not None:
                        _close(conn)
                    conn = self._connect()
                    budget = self.rng.randint(max(1, every // 2), max(1, every * 3 // 2))
                sql, expect = pick_query(self.rng, s.table)
                budget -= 1
                self.started += 1
                kind = self._one(conn, sql, expect)
                self.done += 1
                if kind is not None:
                    # An application backs off after a failure, and reopens its connection
                    # when the server was unreachable.
                    if kind == "grpc:UNAVAILABLE":
                        _close(conn)
                        conn = None
                    stop.wait(self.rng.uniform(0.01, 0.05))
                elif think:
                    stop.wait(self.rng.uniform(0, 2 * think))
        finally:
            if conn is not None:
                _close(conn)

    def _one(self, conn: Any, sql: str, expect: Any) -> Optional[str]:
        """One query on a new cursor; None on success, else the failure's kind."""
        cur = None
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = cur.fetchall()
            cur.clear()
        except Exception as exc:
            kind = classify(exc)
            self.failed += 1
            self.errors[kind] += 1
            if kind == "query_failure" and expect is not FAIL:
                self.unexpected += 1
                self._example(f"{sql!r}: unexpected {kind}")
            if cur is not None:
                try:
                    cur.close()  # the usual clean-up; the connector swallows its errors
                except Exception:
                    pass
            return kind
        self.completed += 1
        if expect is FAIL:
            self.wrong += 1
            self._example(f"{sql!r} succeeded")
        elif rows != expect:
            self.wrong += 1
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            self._example(f"{sql!r}: {got} rows, first {rows[:1] if isinstance(rows, list) else rows!r}")
        return None

    def _example(self, what: str) -> None:
        if len(self.wrong_examples) < 3:
            self.wrong_examples.append(what[:200])


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


# -- the chaos ----------------------------------------------------------------------------------
class Chaos(threading.Thread):
    """Drives the simulator: the step cycle every half switch period, restarts on schedule."""

    FOLLOW_TIMEOUT = 20.0
    CONSUME_TIMEOUT = 15.0
    SETTLE_TIMEOUT = 60.0

    def __init__(self, soak: Soak) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.soak = soak
        self.rng = random.Random(soak.opts.seed)
        self.stop = threading.Event()
        self.colour = "blue"  # the simulator's active colour (this thread changes it)
        self.steps: Counter[str] = Counter()
        self.cycles = 0
        self.log: list[dict[str, Any]] = []
        self.faults_served: Counter[tuple[str, str]] = Counter()
        self.faults_asked: Counter[tuple[str, str]] = Counter()
        self.storm_served: Counter[str] = Counter()
        self.storm_asked: Counter[str] = Counter()
        self.follow_timeouts = 0
        self.applied_before_retire = 0
        self.settle_failures = 0
        self.crash: Optional[str] = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.crash = repr(exc)

    def _run(self) -> None:
        s = self.soak
        tick = s.opts.switch_every / 2
        n = s.opts.restarts
        restart_at = [s.t0 + s.opts.duration * (k + 1) / (n + 1) for k in range(n)]
        i = 0
        while True:
            # Once stopped, finish the minimum programme at once (one whole cycle and every
            # restart), so that even a run slowed down by a loaded machine has done each step.
            stopped = self.stop.wait(tick)
            if stopped and self.cycles >= 1 and not restart_at:
                return
            if restart_at and (stopped or time.monotonic() >= restart_at[0]):
                restart_at.pop(0)
                self._step("restart", self.restart)
                continue
            kind = CYCLE[i % len(CYCLE)]
            i += 1
            self._step(kind, getattr(self, kind))
            if i % len(CYCLE) == 0:
                self.cycles += 1

    def _step(self, kind: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.monotonic() - self.soak.t0
        info = fn()
        self.steps[kind] += 1
        if len(self.log) < 2000:
            self.log.append({"t": round(t, 2), "step": kind, **info})

    # -- waits ------------------------------------------------------------------------------
    def follow(self) -> bool:
        """Wait until the connector holds the simulator's colour (it learns through traffic)."""
        ok = wait_for(lambda: cache_active() == self.colour, self.FOLLOW_TIMEOUT, 0.01)
        if not ok:
            self.follow_timeouts += 1
        return ok

    def settle(self) -> bool:
        """Wait until no RPC of the application can carry a retired colour or a queued fault.

        A round: the connector holds the simulator's colour; then every worker finishes a query
        it started after that moment. If the simulator returned no 456 during the round, every
        RPC still in flight belongs to a query that began under the current colour, and none
        can consume a fault (all were consumed before). Then the simulator's counts and the
        application's stay exactly comparable across a restart, whatever the load."""
        sim = self.soak.sim
        deadline = time.monotonic() + self.SETTLE_TIMEOUT
        workers = self.soak.workers
        while time.monotonic() < deadline:
            if not wait_for(
                lambda: cache_active() == self.colour, max(0.0, deadline - time.monotonic()), 0.01
            ):
                break
            m0 = int(sim.counters()["mismatches_total"])
            marks = [w.started for w in workers]

            def each_did_one(marks: list[int] = marks) -> bool:
                return all(w.done >= m + 1 or not w.is_alive() for w, m in zip(workers, marks))

            if not wait_for(each_did_one, max(0.0, deadline - time.monotonic()), 0.01):
                break
            if int(sim.counters()["mismatches_total"]) == m0 and cache_active() == self.colour:
                return True
        self.settle_failures += 1
        return False

    def consume(self, method: str, code: str, details: str, count: int) -> int:
        """Queue ``count`` faults and wait until they fired; returns how many did (exact)."""
        sim = self.soak.sim
        before = int(sim.counters()["faults_injected"])
        sim.inject_fault(method, code, details, count)
        if not wait_for(
            lambda: int(sim.counters()["faults_injected"]) - before >= count, self.CONSUME_TIMEOUT, 0.05
        ):
            sim.clear_faults()
        return int(sim.counters()["faults_injected"]) - before

    # -- steps ------------------------------------------------------------------------------
    def announced(self) -> dict[str, Any]:
        sim = self.soak.sim
        frm = self.colour
        to = sim.announce()
        # The connector applies an announced colour once its queries drained (or when a
        # connection logs in while it is pending); give it most of the half period.
        applied = wait_for(lambda: cache_active() == to, self.soak.opts.switch_every * 0.4, 0.01)
        if applied:
            self.applied_before_retire += 1
        open_old = sim.complete(drain_wait=min(1.0, self.soak.opts.switch_every * 0.1))
        self.colour = to
        return {
            "from": frm,
            "to": to,
            "client_applied_first": applied,
            "open_on_old": open_old,
            "followed": self.follow(),
        }

    def abrupt(self) -> dict[str, Any]:
        frm = self.colour
        self.colour = self.soak.sim.flip(announce=False)
        return {"from": frm, "to": self.colour, "followed": self.follow()}

    def faults(self) -> dict[str, Any]:
        method, code = FAULTS[self.steps["faults"] % len(FAULTS)]
        count = self.rng.randint(1, max(1, self.soak.opts.threads))
        served = self.consume(method, code, INJECTED, count)
        self.faults_asked[(method, code)] += count
        self.faults_served[(method, code)] += served
        return {"method": method, "code": code, "asked": count, "served": served}

    def storm(self) -> dict[str, Any]:
        method = STORM_METHODS[self.steps["storm"] % len(STORM_METHODS)]
        count = 2 * max(1, self.soak.opts.threads)
        served = self.consume(method, "UNKNOWN", "status: 456", count)
        self.storm_asked[method] += count
        self.storm_served[method] += served
        return {"method": method, "asked": count, "served": served, "followed": self.follow()}

    def restart(self) -> dict[str, Any]:
        settled = self.settle()
        t = time.monotonic()
        self.soak.sim.restart()
        took = time.monotonic() - t
        ok0 = self.soak.completed()
        back = wait_for(lambda: self.soak.completed() > ok0, 30.0, 0.05)
        return {"settled": settled, "restart_seconds": round(took, 3), "recovered": back}


def mismatch_total(rec: Any) -> float:
    from e6observe import metrics as M

    return float(sum(c.value for _, c in rec.family(M.MISMATCHES).items()))


# -- readers of what e6observe exports -------------------------------------------------------------
class EventTap:
    """A recorder subscriber: counts every event it receives, keeps the applied switches."""

    def __init__(self) -> None:
        self.received = 0
        self.kinds: Counter[str] = Counter()
        self.applied: list[tuple[str, str, str]] = []

    def __call__(self, ev: Any) -> None:  # on e6observe's dispatcher thread
        self.received += 1
        self.kinds[ev.kind] += 1
        if ev.kind == "applied":
            self.applied.append((ev.from_strategy, ev.to_strategy, ev.cause))


class StreamFollower(threading.Thread):
    """Follows ``/events?since=0`` like an operator's page would: which event ids arrived.

    Arrivals are kept in a bitmap by id (one byte per event), so that an id arriving after a
    higher one (``late``) is seen for what it is: the soak found e6observe appending events to
    its ring out of seq order under load, which let a client resuming with ``Last-Event-ID``
    miss one (fixed; tests/test_event_order.py). Now ``late`` must stay 0.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(name="soak-events", daemon=True)
        self.host, self.port = host, port
        self.received = 0
        self.last_id = 0
        self.late = 0  # ids that arrived after a higher one (informational)
        self.duplicates = 0
        self.error: Optional[str] = None
        self._seen = bytearray(4096)

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", "/events?since=0")
            resp = conn.getresponse()
            if resp.status != 200:
                self.error = f"HTTP {resp.status}"
                return
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"id:"):
                    self._arrived(int(line[3:].strip()))
        except Exception as exc:
            self.error = repr(exc)
        finally:
            conn.close()

    def _arrived(self, n: int) -> None:
        if n >= len(self._seen):
            self._seen.extend(bytes(n - len(self._seen) + 4096))
        if self._seen[n]:
            self.duplicates += 1
            return
        self._seen[n] = 1
        self.received += 1
        if n < self.last_id:
            self.late += 1
        self.last_id = max(self.last_id, n)

    def missing(self, upto: int) -> int:
        """Ids in 1..upto that never arrived."""
        return upto - sum(self._seen[1 : upto + 1])

    def beyond(self, upto: int) -> int:
        """Ids above ``upto`` that arrived (there should be none)."""
        return sum(self._seen[upto + 1 :])


class Periodic(threading.Thread):
    """Calls ``fn`` every ``period`` seconds until stopped (failures are counted)."""

    def __init__(self, name: str, period: float, fn: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.period, self.fn = period, fn
        self.stop = threading.Event()
        self.errors = 0
        self.last_error: Optional[str] = None

    def run(self) -> None:
        while True:
            try:
                self.fn()
            except Exception as exc:
                self.errors += 1
                self.last_error = repr(exc)[:300]
            if self.stop.wait(self.period):
                return


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    judged: bool = True


@dataclass
class Report:
    options: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, judged: bool = True) -> None:
        self.checks.append(Check(name, bool(ok), detail, judged))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "options": self.options,
            "figures": self.figures,
            "checks": [asdict(c) for c in self.checks],
            "failed": [c.name for c in self.checks if not c.ok],
        }


class Soak:
    def __init__(self, opts: SoakOptions) -> None:
        self.opts = opts
        self.table = _expected_table()
        self.sim: Any = None
        self.rec: Any = None
        self.mounted: Any = None
        self.switch_log: Optional[chaos.ConnectorSwitchLog] = None
        self.workers: list[Worker] = []
        self.stop_workers = threading.Event()
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, int]] = []
        self.scrapes = 0
        self.scrape_failures: Counter[str] = Counter()
        self.threads_peak = 0
        self.rss_after_stop = 0

    def completed(self) -> int:
        return sum(w.completed for w in self.workers)

    # -- sampling -----------------------------------------------------------------------------
    def _sample_rss(self) -> None:
        self.rss.append((time.monotonic() - self.t0, rss_now()))
        self.threads_peak = max(self.threads_peak, threading.active_count())

    def _scrape(self) -> None:
        """What Prometheus does: GET /metrics (and every 5th time /status), under load."""
        self.scrapes += 1
        path = "/metrics"
        try:
            base = self.base_url()
            code, _ = chaos.http_get(base + path)
            if code != 200:
                self.scrape_failures[f"{path} {code}"] += 1
            if self.scrapes % 5 == 0:
                path = "/status"
                code, body = chaos.http_get(base + path)
                if code != 200:
                    self.scrape_failures[f"{path} {code}"] += 1
                else:
                    json.loads(body)
        except Exception as exc:
            self.scrape_failures[f"{path} {type(exc).__name__}"] += 1

    def base_url(self) -> str:
        url = chaos.metrics_url()
        if url is None:
            raise RuntimeError("no /metrics endpoint")
        return url.rsplit("/", 1)[0]

    # -- main --------------------------------------------------------------------------------
    def run(self) -> Report:
        from e6observe import _api, _safe
        from e6observe._api import instrument, uninstrument  # e6observe.instrument, typed
        from e6observe.endpoint import status

        opts = self.opts
        report = Report(options=asdict(opts))
        report.options["warmup"] = opts.warmup_seconds()
        rss_before_sim = rss_now()
        self.sim = chaos.SimProcess(max_workers=64)
        periodic: list[Periodic] = []
        follower: Optional[StreamFollower] = None
        chaos_thread: Optional[Chaos] = None
        tap = EventTap()
        try:
            _safe.reset_for_tests()
            self.rec = instrument(
                prometheus_port=0,
                otel=False,
                watcher_interval=opts.watcher_interval,
                event_capacity=opts.event_capacity,
            )
            if self.rec is None:
                raise RuntimeError("e6observe.instrument() returned None")
            if getattr(_api._active, "status", None) is None:
                # instrument(prometheus_port=...) mounts /status and /events itself; an older
                # e6observe did not, and then the soak mounts them (and unmounts them at the end)
                self.mounted = status.mount_instrumentation(_api._active)
            self.rec.subscribe(tap)
            self.switch_log = chaos.ConnectorSwitchLog().install(
                self.sim.host, self.sim.port, USER.format("log"), PASSWORD
            )
            host, port = self.base_url().rsplit("//", 1)[1].rsplit(":", 1)
            follower = StreamFollower(host, int(port))
            follower.start()

            self.t0 = time.monotonic()
            self.rss.append((0.0, rss_now()))
            self.workers = [Worker(i, self) for i in range(opts.threads)]
            for w in self.workers:
                w.start()
            periodic = [
                Periodic("soak-rss", opts.rss_every, self._sample_rss),
                Periodic("soak-scrape", opts.scrape_every, self._scrape),
            ]
            for p in periodic:
                p.start()
            chaos_thread = Chaos(self)
            chaos_thread.start()

            # The run: wait out the duration (every thread is a daemon; this thread only waits).
            end = self.t0 + opts.duration
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                if chaos_thread.crash or not chaos_thread.is_alive():
                    break
            chaos_thread.stop.set()
            chaos_thread.join(240)  # the rest of its minimum programme, bounded
            chaos_hung = chaos_thread.is_alive()
            # Let the connector learn the final colour through traffic before the load stops.
            followed_at_end = chaos_thread.follow()
            for p in periodic:  # the samplers end while the load still runs
                p.stop.set()
            for p in periodic:
                p.join(15)
            self._sample_rss()
            self.stop_workers.set()
            join_deadline = time.monotonic() + 60
            for w in self.workers:
                w.join(max(0.1, join_deadline - time.monotonic()))
            hung = [w.name for w in self.workers if w.is_alive()]
            self.rss_after_stop = rss_now()  # the workers' connections closed: not in the trend
            self.rec.flush(5.0)
            self._finish(
                report, tap, follower, chaos_thread, hung, chaos_hung, followed_at_end, rss_before_sim
            )
        finally:
            if chaos_thread is not None:
                chaos_thread.stop.set()
            self.stop_workers.set()
            for p in periodic:
                p.stop.set()
            if self.switch_log is not None:
                self.switch_log.uninstall()
            if self.mounted is not None:
                self.mounted.unmount()
            uninstrument()
            if follower is not None:
                follower.join(5)
            self.sim.stop()
        return report

    # -- the verdict ---------------------------------------------------------------------------
    def _finish(
        self,
        report: Report,
        tap: EventTap,
        follower: StreamFollower,
        ch: Chaos,
        hung: list[str],
        chaos_hung: bool,
        followed_at_end: bool,
        rss_before_sim: int,
    ) -> None:
        from e6observe import _safe
        from e6observe import metrics as M

        opts, rec, f = self.opts, self.rec, report.figures
        wall = time.monotonic() - self.t0
        sim_c = self.sim.counters()

        # ---- the application's view
        errors: Counter[str] = Counter()
        for w in self.workers:
            errors.update(w.errors)
        completed = sum(w.completed for w in self.workers)
        wrong = sum(w.wrong for w in self.workers)
        failed = sum(w.failed for w in self.workers)
        unexpected = sum(w.unexpected for w in self.workers)
        f["queries"] = {
            "run": completed + failed,
            "ok": completed - wrong,
            "wrong_rows": wrong,
            "error": failed,
            "errors_by_kind": dict(sorted(errors.items())),
            "per_second": round((completed + failed) / max(wall, 1e-9), 1),
            "connections_opened": sum(w.connections for w in self.workers),
        }
        report.add(
            "workload.ran", completed > 0 and completed - wrong > 0, f"{completed - wrong} correct queries"
        )
        report.add(
            "workload.rows_correct",
            wrong == 0 and unexpected == 0,
            f"{wrong} queries returned wrong rows or a wrong success, {unexpected} failed "
            "that should not have; examples: "
            f"{[e for w in self.workers for e in w.wrong_examples][:5]}",
        )
        crashes = [f"{w.name}: {w.crash}" for w in self.workers if w.crash]
        report.add(
            "threads.bounded",
            not hung and not crashes and not chaos_hung and not ch.crash,
            f"hung workers {hung}, crashed {crashes}, chaos hung {chaos_hung}, "
            f"chaos crash {ch.crash}; peak threads {self.threads_peak}",
        )

        # ---- chaos that happened
        f["chaos"] = {
            "steps": dict(ch.steps),
            "cycles": ch.cycles,
            "simulator_switches": sim_c["switches"],
            "announced_applied_before_retire": ch.applied_before_retire,
            "follow_timeouts": ch.follow_timeouts,
            "settle_failures": ch.settle_failures,
            "restarts": sim_c["restarts"],
            "followed_at_end": followed_at_end,
            "log": ch.log,
        }
        want_steps = set(CYCLE) | ({"restart"} if opts.restarts else set())
        report.add(
            "chaos.executed",
            want_steps <= set(ch.steps) and sim_c["restarts"] == ch.steps["restart"] == opts.restarts,
            f"steps {dict(ch.steps)}, simulator restarts {sim_c['restarts']}",
        )

        # ---- switches: the connector's own log vs e6observe (recorder, /metrics, subscriber)
        assert self.switch_log is not None
        made = self.switch_log.switches()
        made_by = Counter(made)
        rec_sw = {k: v for k, v in chaos.counter_values(rec, M.SWITCHES).items()}
        rec_by: Counter[tuple[str, str]] = Counter()
        by_cause: Counter[str] = Counter()
        for (frm, to, cause), v in rec_sw.items():
            rec_by[(frm, to)] += int(v)
            by_cause[cause] += int(v)
        base = self.base_url()
        code, text = chaos.http_get(base + "/metrics")
        parsed = parse_exposition(text) if code == 200 else []
        prom_by: Counter[tuple[str, str]] = Counter()
        for lab, v in samples(parsed, M.SWITCHES.prom_name + "_total"):
            if v:
                prom_by[(lab["from"], lab["to"])] += int(v)
        tap_by = Counter((a, b) for a, b, _ in tap.applied)
        f["switches"] = {
            "connector_made": len(made),
            "e6observe_recorder": sum(rec_by.values()),
            "e6observe_metrics": sum(prom_by.values()),
            "e6observe_events": len(tap.applied),
            "by_cause": dict(by_cause),
            "by_direction": {f"{a}->{b}": n for (a, b), n in sorted(made_by.items())},
        }
        report.add(
            "switches.recorder_equals_connector",
            rec_by == made_by,
            f"connector {dict(made_by)} vs recorder {dict(rec_by)}",
        )
        report.add(
            "switches.metrics_equals_connector",
            code == 200 and prom_by == made_by,
            f"/metrics HTTP {code}: {dict(prom_by)} vs connector {dict(made_by)}",
        )
        report.add(
            "switches.events_in_order",
            [(a, b) for a, b, _ in tap.applied] == made,
            f"{len(tap.applied)} applied events vs {len(made)} switches, same order: {tap_by == made_by}",
        )
        last_known = next((v for v in reversed(self.switch_log.values) if v), None)
        report.add(
            "switches.final_colour",
            rec.active == last_known,
            f"e6observe active {rec.active}, connector's last colour {last_known}, "
            f"simulator {sim_c['active']}",
        )

        # ---- the event ring and every reader of it
        ring = rec.ring
        emitted, kept, evicted = ring.emitted, len(ring), ring.evicted
        dropped = {k[0]: int(v) for k, v in chaos.counter_values(rec, M.EVENTS_DROPPED).items()}
        # every event reached the subscriber or was counted as dropped (the dispatcher may still
        # be delivering its last batch)
        wait_for(lambda: tap.received + dropped.get("dispatch", 0) >= ring.emitted, 10.0)
        prom_events = sum(v for _, v in samples(parsed, M.EVENTS.prom_name + "_total"))
        prom_dropped = {
            lab["sink"]: int(v) for lab, v in samples(parsed, M.EVENTS_DROPPED.prom_name + "_total")
        }
        code_s, body_s = chaos.http_get(base + "/status")
        st = json.loads(body_s).get("events", {}) if code_s == 200 else {}
        # The stream has sent everything once every id arrived (or it stopped); an event evicted
        # before the stream read it never arrives, and then this waits the bound out.
        wait_for(lambda: follower.received >= ring.emitted or not follower.is_alive(), 15.0)
        missing, beyond = follower.missing(emitted), follower.beyond(emitted)
        f["events"] = {
            "emitted": emitted,
            "kept": kept,
            "evicted": evicted,
            "capacity": ring.capacity,
            "dropped": dropped,
            "by_kind": dict(tap.kinds),
            "subscriber_received": tap.received,
            "stream": {
                "received": follower.received,
                "missing": missing,
                "last_id": follower.last_id,
                "late": follower.late,
                "duplicates": follower.duplicates,
                "error": follower.error,
            },
        }
        report.add(
            "events.ring_accounting",
            emitted == kept + evicted and kept <= ring.capacity,
            f"emitted {emitted} == kept {kept} + evicted {evicted}",
        )
        seqs = [e.seq for e in ring.snapshot()]
        report.add(
            "events.ring_contents",
            len(set(seqs)) == len(seqs) == kept and all(1 <= q <= emitted for q in seqs),
            f"{len(seqs)} distinct seqs in 1..{emitted}",
        )
        report.add(
            "events.metrics_count_every_event",
            int(prom_events) == emitted,
            f"e6data_strategy_events_total {prom_events:g} vs emitted {emitted}",
        )
        report.add(
            "events.subscriber_lossless_or_counted",
            tap.received + dropped.get("dispatch", 0) == emitted,
            f"received {tap.received} + dropped {dropped.get('dispatch', 0)} vs {emitted}",
        )
        report.add(
            "events.status_accounting",
            code_s == 200
            and int(st.get("emitted", -1)) == emitted
            and int(st.get("in_ring", -1)) + int(st.get("evicted", -1)) == emitted,
            f"/status HTTP {code_s} events {st.get('emitted')} = {st.get('in_ring')} + {st.get('evicted')}",
        )
        report.add(
            "events.stream_complete",
            follower.error is None
            and follower.duplicates == 0
            and beyond == 0
            and follower.late == 0
            and follower.received + missing == emitted
            and missing <= evicted,
            f"stream received {follower.received} + missing {missing} vs emitted {emitted}"
            f" (missing only if evicted first: <= {evicted}); duplicates "
            f"{follower.duplicates}, beyond {beyond}, late {follower.late}, error "
            f"{follower.error}",
        )
        report.add(
            "events.drops_exported",
            {k: v for k, v in prom_dropped.items() if v} == {k: v for k, v in dropped.items() if v},
            f"/metrics {prom_dropped} vs recorder {dropped}",
        )

        # ---- queries: the application's count vs e6observe's
        qd = chaos.histogram_counts(rec, M.QUERY_DURATION)
        q_ok = sum(n for (_, o), n in qd.items() if o == "ok")
        q_err = sum(n for (_, o), n in qd.items() if o != "ok")
        in_flight = rec.state()["in_flight"]
        f["queries"]["e6observe"] = {
            "ok": q_ok,
            "error": q_err,
            "switch_interrupted": sum(n for (_, o), n in qd.items() if o == "switch_interrupted"),
        }
        report.add(
            "queries.counted",
            q_ok == completed and q_err == failed,
            f"e6observe ok {q_ok} / failed {q_err} vs application {completed} / {failed}",
        )
        report.add("queries.in_flight_zero", not any(in_flight.values()), f"in flight {in_flight}")

        # ---- faults injected vs failures e6observe counted (the simulator is the reference)
        rpc = chaos.histogram_counts(rec, M.RPC_DURATION)
        counted: Counter[tuple[str, str]] = Counter()
        for (method, _, c), n in rpc.items():
            if (method, c) in ch.faults_served or (method, c) in ch.faults_asked:
                counted[(method, c)] += n
        served = +ch.faults_served
        f["faults"] = {
            "injected": sum(ch.faults_asked.values()),
            "served": sum(served.values()),
            "counted_by_e6observe": sum(counted.values()),
            "seen_by_application": errors["injected"],
            "by_method": {
                f"{m}/{c}": [served[(m, c)], counted[(m, c)]] for (m, c) in sorted(set(served) | set(counted))
            },
            "storm_456_injected": sum(ch.storm_asked.values()),
            "storm_456_served": sum(ch.storm_served.values()),
        }
        report.add(
            "faults.counted",
            served == +counted and sum(served.values()) > 0,
            f"served by the simulator {dict(served)} vs counted {dict(counted)}",
        )
        report.add(
            "faults.seen_by_application",
            errors["injected"] <= sum(served.values()),
            f"application saw {errors['injected']} of {sum(served.values())} "
            "(the rest hit clean-up calls the connector swallows)",
        )
        mm = int(mismatch_total(rec))
        sim_mm = int(sim_c["mismatches_total"]) + sum(ch.storm_served.values())
        f["mismatches"] = {
            "e6observe": mm,
            "simulator_456": sim_c["mismatches_total"],
            "storm_456": sum(ch.storm_served.values()),
        }
        report.add(
            "mismatches.counted",
            mm == sim_mm and ch.settle_failures == 0,
            f"e6observe {mm} vs simulator {sim_c['mismatches_total']} + storm "
            f"{sum(ch.storm_served.values())} (restart settled: {ch.settle_failures == 0})",
        )

        # ---- e6observe's own health
        ie = _safe.internal_errors()
        prom_ie = {
            lab["component"]: v for lab, v in samples(parsed, M.INTERNAL_ERRORS.prom_name + "_total") if v
        }
        f["internal_errors"] = {"recorder": ie, "metrics": prom_ie}
        report.add(
            "e6observe.no_internal_errors",
            not ie and not prom_ie and code == 200,
            f"internal errors {ie}, on /metrics {prom_ie}",
        )
        f["scrapes"] = {"count": self.scrapes, "failed": dict(self.scrape_failures)}
        report.add(
            "e6observe.scrapes_ok",
            self.scrapes > 0 and not self.scrape_failures,
            f"{self.scrapes} scrapes, failures {dict(self.scrape_failures)}",
        )
        cache = _connector_cache()
        qmap = cache.get("query_strategy_map") or {}
        f["connector"] = {
            "active": cache.get("active_strategy"),
            "pending": cache.get("pending_strategy"),
            "query_map_entries": len(qmap),
        }
        f["e6observe_state"] = {"active": rec.active, "pending": rec.pending}

        # ---- memory: RSS trend after warm-up (see docs/soak.md for the bounds)
        warm = opts.warmup_seconds()
        after = [(t, float(v)) for t, v in self.rss if t >= warm]
        start_v = after[0][1] if after else float(self.rss[0][1])
        end_v = float(self.rss[-1][1])
        slope = chaos.slope([(t / 60.0, v / MIB) for t, v in after])  # MiB per minute
        window = (after[-1][0] - after[0][0]) if len(after) > 1 else 0.0
        f["rss"] = {
            "before_simulator_mib": round(rss_before_sim / MIB, 1),
            "start_mib": round(self.rss[0][1] / MIB, 1),
            "after_warmup_mib": round(start_v / MIB, 1),
            "end_mib": round(end_v / MIB, 1),
            "after_stop_mib": round(self.rss_after_stop / MIB, 1),
            "peak_mib": round(max(v for _, v in self.rss) / MIB, 1),
            "slope_mib_per_min": round(slope, 3),
            "samples": len(self.rss),
            # the trend per query: what a leak of N bytes per query would show as
            "slope_bytes_per_query": round(
                slope * MIB / max(1e-9, 60 * (completed + failed) / max(wall, 1e-9)), 1
            ),
            "window_seconds": round(window, 1),
            "warmup_seconds": warm,
            # [seconds, MiB], at most ~100 points
            "series": [
                [round(t, 1), round(v / MIB, 2)] for t, v in self.rss[:: max(1, len(self.rss) // 100)]
            ],
        }
        growth = (end_v - start_v) / MIB
        report.add(
            "rss.growth_bounded",
            growth <= opts.rss_growth_max,
            f"{growth:.1f} MiB after warm-up (bound {opts.rss_growth_max:g} MiB)",
        )
        judged = window >= opts.rss_min_window
        report.add(
            "rss.trend_bounded",
            (not judged) or slope <= opts.rss_slope_max,
            f"slope {slope:.3f} MiB/min over {window:.0f} s (bound {opts.rss_slope_max:g}"
            f" MiB/min{'' if judged else f'; not judged under {opts.rss_min_window:g} s'})",
            judged=judged,
        )
        f["wall_seconds"] = round(wall, 1)


# -- output ---------------------------------------------------------------------------------------
def summary(rep: dict[str, Any]) -> str:
    f = rep["figures"]
    q, sw, ev, rss, fl, mm = (
        f.get(k, {}) for k in ("queries", "switches", "events", "rss", "faults", "mismatches")
    )
    lines = [
        f"e6observe chaos soak: {rep['options']['duration']:g} s, {rep['options']['threads']} threads"
        f" ({f.get('wall_seconds', 0):g} s of load)",
        f"  queries    {q.get('run', 0)} run: {q.get('ok', 0)} ok, {q.get('error', 0)} failed, "
        f"{q.get('wrong_rows', 0)} wrong rows; {q.get('per_second', 0)}/s; failures "
        f"{q.get('errors_by_kind', {})}",
        f"  chaos      {f.get('chaos', {}).get('steps', {})}; simulator switches "
        f"{f.get('chaos', {}).get('simulator_switches', 0)}",
        f"  switches   connector made {sw.get('connector_made', 0)}; e6observe recorder "
        f"{sw.get('e6observe_recorder', 0)}, /metrics {sw.get('e6observe_metrics', 0)}, events "
        f"{sw.get('e6observe_events', 0)}; by cause {sw.get('by_cause', {})}",
        f"  events     emitted {ev.get('emitted', 0)} = kept {ev.get('kept', 0)} + evicted "
        f"{ev.get('evicted', 0)}; dropped {ev.get('dropped', {})}; /events stream missed "
        f"{ev.get('stream', {}).get('missing', 0)}",
        f"  faults     injected {fl.get('injected', 0)}, fired {fl.get('served', 0)}, counted "
        f"{fl.get('counted_by_e6observe', 0)}; 456 storms fired {fl.get('storm_456_served', 0)};"
        f" mismatches e6observe {mm.get('e6observe', 0)} vs simulator "
        f"{mm.get('simulator_456', 0)} + storms {mm.get('storm_456', 0)}",
        f"  rss        start {rss.get('start_mib', 0)} MiB, after warm-up "
        f"{rss.get('after_warmup_mib', 0)}, end {rss.get('end_mib', 0)}, peak "
        f"{rss.get('peak_mib', 0)}; slope {rss.get('slope_mib_per_min', 0)} MiB/min over "
        f"{rss.get('window_seconds', 0)} s (~{rss.get('slope_bytes_per_query', 0)} bytes/query)",
        f"  internal   {f.get('internal_errors', {}).get('recorder', {})}",
        "  checks",
    ]
    for c in rep["checks"]:
        mark = "ok  " if c["ok"] else "FAIL"
        if not c["judged"]:
            mark = "n/a "
        lines.append(f"    {mark} {c['name']}: {c['detail']}")
    lines.append("RESULT: " + ("all invariants hold" if rep["ok"] else "FAILED: " + ", ".join(rep["failed"])))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    opts = parse_args(argv)
    # Never hang: a run that overstays its welcome dumps every thread's stack and exits.
    faulthandler.dump_traceback_later(opts.duration + 600, exit=True)
    try:
        try:
            report = Soak(opts).run()
        except Exception as exc:
            print(f"soak: could not run: {exc!r}", file=sys.stderr)
            return 2
        rep = report.to_json()
        print(summary(rep))
        line = json.dumps(rep, sort_keys=True, default=str)
        if opts.json_path:
            with open(opts.json_path, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
        print(line)
        sys.stdout.flush()
        return 0 if report.ok else 1
    finally:
        faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Worker threads are daemons and every resource is closed; leave without waiting for grpc's
    # own threads to wind down.
    os._exit(code)
