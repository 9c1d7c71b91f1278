"""The watcher: a background thread that sees what the hooks cannot.

Hooks see every call that passes through the connector. The watcher reads the connector's
strategy cache (``e6data_grpc._local_strategy_cache``, "cache A") once per ``watcher_interval``
and reports:

* a strategy change no hook reported, as a switch with cause ``observed`` (and the first
  strategy seen with nothing reported as ``detected``);
* a pending strategy no hook reported, as ``announced``;
* a heartbeat, so a dead agent is visible (``e6observe_watcher_last_run_timestamp_seconds``).

Cache health (pending age, cached-strategy age, query-map entries, session-invalidated, open
connections) is read when a scrape or an OpenTelemetry reader asks, not copied into gauges.

Reading rules (see ``docs/`` and the connector notes): the watcher reads single keys and
``len(query_strategy_map)`` without the connector's ``_strategy_lock`` and never iterates the
map; it never takes that lock, so it can neither stall a query nor deadlock with one.

No double counting. The reference for "what cache A holds" is the strategy-cache hook's own
(when installed) or the watcher's last sighting; a colour the recorder already shows is never
reported again. The hook stores a new value a moment before it reports it, so a discrepancy is
reported only when two consecutive iterations see the same one: a missed switch is reported
within two intervals, and a switch a hook is reporting right now is never counted twice. After
reporting, the watcher tells the hook (``note_observed``) so the connector's next write of that
colour is not counted again either. Polling cannot see a flip that is undone within one interval.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import weakref
from collections import deque
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

from . import _fork, _forkhazards
from . import metrics as M
from ._safe import contain
from .recorder import Recorder, norm_strategy

#: Thread name; tests and ``uninstrument()`` look for it.
THREAD_NAME = "e6observe-watcher"
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.01
MAX_INTERVAL = 86400.0

# Connections whose channel state the open-connections gauge reads. Filled by
# :func:`track_connection` (the channel and pool hooks call it); weak, so tracking never keeps
# a connection alive.
_connections: weakref.WeakSet[Any] = weakref.WeakSet()
_connections_lock = threading.Lock()


def track_connection(conn: Any) -> None:
    """Count ``conn`` (a connector ``Connection`` or ``AsyncConnection``) in the open-connections
    gauge while it has an open channel. Cheap, idempotent, never raises."""
    try:
        with _connections_lock:
            _connections.add(conn)
    except TypeError:  # not weak-referenceable: nothing to track
        pass


def _renew_connections_lock_after_fork() -> None:
    global _connections_lock
    _connections_lock = threading.Lock()


def open_connections() -> int:
    """Tracked connector connections whose gRPC channel is open right now."""
    with _connections_lock:
        conns = list(_connections)
    return sum(1 for c in conns if getattr(c, "_channel", None) is not None)


def _connector_cache() -> Optional[Any]:
    """The connector's live cache A, or None when the connector is not importable.

    Looked up on every read: the strategy-cache hook may replace the module global.
    """
    try:
        from e6data_python_connector import e6data_grpc
    except Exception:
        return None
    return getattr(e6data_grpc, "_local_strategy_cache", None)


def validate_interval(value: Any) -> float:
    """``watcher_interval`` in seconds: a finite number in (0, 86400], or ValueError saying why.

    The same range ``e6observe.config`` accepts; values below ``MIN_INTERVAL`` are raised to it
    when the thread waits (a watcher spinning faster than 100 Hz would only burn CPU).
    """
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"watcher_interval must be a number of seconds, not {value!r}") from None
    if not math.isfinite(f) or not 0 < f <= MAX_INTERVAL:
        raise ValueError(f"watcher_interval must be > 0 and <= {MAX_INTERVAL:g} seconds, "
                         f"not {value!r}")
    return f


class CacheReading:
    """One lock-free reading of the connector's cache A (strategies already normalised)."""

    __slots__ = ("active", "pending", "last_check_time", "query_map_entries",
                 "session_invalidated")

    def __init__(self, cache: Any) -> None:
        get = cache.get
        self.active = norm_strategy(get("active_strategy"))
        self.pending = norm_strategy(get("pending_strategy"))
        last = get("last_check_time")
        self.last_check_time = float(last) if isinstance(last, (int, float)) else 0.0
        qmap = get("query_strategy_map")
        # len() of a dict is one atomic read; iterating it unlocked is not safe.
        self.query_map_entries = len(qmap) if qmap is not None else 0
        self.session_invalidated = bool(get("session_invalidated"))


#: Watchers started and not stopped (weak: a watcher dropped without stop() is not kept alive).
_started: weakref.WeakSet[Watcher] = weakref.WeakSet()


class Watcher:
    """Background thread reading the connector's strategy cache every ``watcher_interval``.

    ``options`` is an ``e6observe.config.Options`` (or anything with ``watcher_interval``;
    None = defaults). ``start()`` and ``stop()`` are idempotent and may be called in any order.
    """

    def __init__(self, recorder: Recorder, options: Any = None) -> None:
        self.recorder = recorder
        self.options = options
        self.interval = validate_interval(getattr(options, "watcher_interval", DEFAULT_INTERVAL)
                                          if options is not None else DEFAULT_INTERVAL)
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._running = False
        #: Unix time the last iteration finished (0 before the first): the heartbeat.
        self.last_run = 0.0
        #: Iterations completed since start (tests count intervals with it).
        self.iterations = 0
        # CPU the watcher thread has used (time.thread_time), and wall time it has run.
        self._cpu_seconds = 0.0
        self._run_seconds = 0.0
        self._started_mono = 0.0
        # Flip detection state: the last valid strategy seen in the cache, and a discrepancy
        # seen once and waiting for confirmation by the next iteration.
        self._last_active: Optional[str] = None
        self._suspect_active: Optional[tuple[str, Optional[str]]] = None
        self._suspect_pending: Optional[tuple[str, Optional[str]]] = None
        # (pending strategy, unix time first seen) for pending age when no hook reported it.
        self._pending_seen: Optional[tuple[str, float]] = None
        #: What the watcher itself reported: (iteration, kind, from, to), the latest 64.
        self.reports: deque[tuple[int, str, str, str]] = deque(maxlen=64)
        self._otel_enabled = False
        self._flushers: list[Callable[[], Any]] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Watcher:
        """Start the thread (no-op if running). Returns self."""
        with self._lock:
            if self._running and self._thread is not None and self._thread.is_alive():
                return self
            self._running = True
            self._otel_enabled = True
            self._stop_event = threading.Event()
            self._spawn()
        _started.add(self)
        # In a forked child: the module's lock, this watcher's store, the connector's inherited
        # state, then this thread again (after the sinks).
        _fork.register("locks", _renew_connections_lock_after_fork, "fork.watcher")
        _fork.register("stores", self._reset_recorder_after_fork, "fork.recorder")
        _forkhazards.install()
        _fork.register("threads", self._after_fork_in_child, "fork.watcher")
        return self

    def _spawn(self) -> None:
        t = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = t
        self._started_mono = time.monotonic()
        t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (no-op if not running). Safe from any thread."""
        with self._lock:
            self._running = False
            self._otel_enabled = False
            t = self._thread
            self._thread = None
            self._stop_event.set()
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(timeout)
        _started.discard(self)
        _fork.unregister("stores", self._reset_recorder_after_fork)
        _fork.unregister("threads", self._after_fork_in_child)

    @property
    def running(self) -> bool:
        """True while the watcher thread is alive."""
        t = self._thread
        return t is not None and t.is_alive()

    def _reset_recorder_after_fork(self) -> None:
        self.recorder.reset_after_fork()  # once per fork, whoever else reset it

    def _after_fork_in_child(self) -> None:
        """Called in a forked child: threads do not survive fork, so start a fresh one.

        The parent's lock or event may have been held by its watcher thread at fork time; the
        child gets new ones. Readings restart from the inherited cache.
        """
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread = None
        self._suspect_active = self._suspect_pending = None
        self._cpu_seconds = self._run_seconds = 0.0
        self.iterations = 0
        if self._running:
            self._spawn()

    def _run(self) -> None:
        stop = self._stop_event
        cpu0 = time.thread_time()
        while not stop.is_set():
            with contain("watcher"):
                self.run_once()
            self._cpu_seconds = time.thread_time() - cpu0
            self._run_seconds = time.monotonic() - self._started_mono
            # The only sleep: wakes at once on stop().
            if stop.wait(max(self.interval, MIN_INTERVAL)):
                break

    # -- one iteration --------------------------------------------------------------------------
    def run_once(self) -> None:
        """One watcher iteration: detect unreported changes, beat, flush multiprocess values.

        Public so tests and a forked child can drive it deterministically; the thread calls it
        once per interval inside ``contain("watcher")``.
        """
        cache = _connector_cache()
        if cache is not None:
            reading = CacheReading(cache)
            self._check_active(reading)
            self._check_pending(reading)
        self.iterations += 1
        self.last_run = time.time()
        # After the heartbeat, so the flushed per-process state carries this iteration's beat.
        self._flush()

    def _check_active(self, r: CacheReading) -> None:
        to = r.active
        if to not in M.STRATEGIES:
            # Cleared (None) between a 456 and the next detection: not a switch by itself.
            self._suspect_active = None
            return
        hooked, known = _strategy_hook_known()
        # The colour cache A is known to have held: the strategy-cache hook's own reference when
        # it is installed (exact, and about cache A only), else the watcher's last sighting.
        # The recorder's ``active`` is not enough on its own: the async API's per-connection
        # state reports into it too and may legitimately differ from cache A.
        ref = known if hooked else self._last_active
        rec_active = self.recorder.active
        if to == ref or to == rec_active:
            self._last_active = to  # nothing unreported
            self._suspect_active = None
            return
        if ref is None and rec_active is not None:
            # Nothing is known about cache A, and the recorder holds another colour (from the
            # async API): no evidence the cache moved. Take it as the baseline.
            self._last_active = to
            self._suspect_active = None
            return
        key = (to, ref)
        if self._suspect_active != key:
            self._suspect_active = key  # seen once; confirm on the next iteration
            return
        self._suspect_active = None
        self._last_active = to
        if ref is None:
            self.recorder.detected(to)
            self._note("detected", "", to)
        else:
            self.recorder.applied(ref, to, "observed", pinned_queries=r.query_map_entries)
            self._note("applied", ref, to)
        _tell_strategy_hook(to)

    def _check_pending(self, r: CacheReading) -> None:
        pending = r.pending if r.pending in M.STRATEGIES and r.pending != r.active else None
        if pending is None:
            self._pending_seen = None
            self._suspect_pending = None
            return
        seen = self._pending_seen
        if seen is None or seen[0] != pending:
            self._pending_seen = (pending, time.time())
        rec_pending = self.recorder.pending
        if rec_pending == pending:
            self._suspect_pending = None
            return
        key = (pending, rec_pending)
        if self._suspect_pending != key:
            self._suspect_pending = key
            return
        self._suspect_pending = None
        self.recorder.announced(pending)
        self._note("announced", rec_pending or "", pending)

    def _note(self, kind: str, frm: str, to: str) -> None:
        # The iteration that reported it (this one, counted once it completes).
        self.reports.append((self.iterations + 1, kind, frm, to))

    def add_flush(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` once per iteration (contained), e.g. a multi-process sink's
        ``flush``. When none is added, the watcher flushes every live multi-process
        ``PrometheusSink`` by itself."""
        if fn not in self._flushers:
            self._flushers.append(fn)

    def _flush(self) -> None:
        fns = list(self._flushers) or _live_multiprocess_flushes()
        for fn in fns:
            with contain("watcher.multiprocess"):
                fn()

    # -- readings (collection time) -----------------------------------------------------------
    def pending_age(self, reading: Optional[CacheReading] = None,
                    now: Optional[float] = None) -> float:
        """Seconds the cache's pending strategy has waited (0 if none)."""
        r = reading if reading is not None else self.read_cache()
        if r is None or r.pending not in M.STRATEGIES or r.pending == r.active:
            return 0.0
        now = time.time() if now is None else now
        rec = self.recorder
        since: Optional[float] = None
        if rec.pending == r.pending and rec.pending_since is not None:
            since = rec.pending_since  # the hook saw the announcement: its time is exact
        else:
            seen = self._pending_seen
            if seen is not None and seen[0] == r.pending:
                since = seen[1]
        return max(0.0, now - since) if since is not None else 0.0

    @staticmethod
    def read_cache() -> Optional[CacheReading]:
        """A lock-free reading of the connector's cache A now (None without the connector)."""
        cache = _connector_cache()
        return CacheReading(cache) if cache is not None else None

    def readings(self) -> dict[str, float]:
        """Every watcher gauge by Prometheus name, read now. Cache-age is left out until the
        connector has learned a strategy (there is no age to report)."""
        now = time.time()
        out: dict[str, float] = {M.WATCHER_LAST_RUN.prom_name: self.last_run,
                                 M.CONNECTIONS_OPEN.prom_name: float(open_connections())}
        r = self.read_cache()
        if r is not None:
            out[M.PENDING_AGE.prom_name] = self.pending_age(r, now)
            if r.last_check_time > 0:
                out[M.CACHE_AGE.prom_name] = max(0.0, now - r.last_check_time)
            out[M.QUERY_MAP_ENTRIES.prom_name] = float(r.query_map_entries)
            out[M.SESSION_INVALIDATED.prom_name] = 1.0 if r.session_invalidated else 0.0
        out.update(_forkhazards.readings())
        return out

    # -- cost ---------------------------------------------------------------------------------
    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the watcher thread has used since it started (``time.thread_time``)."""
        return self._cpu_seconds

    def cpu_seconds_per_second(self) -> float:
        """The watcher thread's CPU use per wall-clock second since start (0 before the first
        iteration). For the benchmark: start a watcher at the default interval, wait, read."""
        run = self._run_seconds
        return self._cpu_seconds / run if run > 0 else 0.0

    # -- export -------------------------------------------------------------------------------
    def collectors(self, runtime_metrics: Any = True) -> list[Any]:
        """Prometheus collectors to register in the sink's registry: watcher gauges, process
        runtime (unless ``runtime_metrics`` is False), connection pools, the cluster."""
        from .hooks.cluster import ClusterCollector
        from .hooks.pool import PoolCollector
        from .runtime import RuntimeCollector

        runtime = [RuntimeCollector()] if runtime_metrics is not False else []
        return [WatcherCollector(self), *runtime, PoolCollector(), ClusterCollector(self.recorder)]

    def register_otel(self, meter: Any, runtime_metrics: Any = True) -> list[Any]:
        """Register the watcher's, runtime and pool observable instruments on ``meter``.

        The callbacks report nothing once the watcher is stopped (OpenTelemetry cannot remove
        an instrument). ``runtime_metrics``: True, False (no runtime instruments) or "auto"
        (silent while OpenTelemetry's system-metrics instrumentation is active)."""
        from . import runtime
        from .hooks import cluster, pool

        enabled = self._otel_is_enabled
        rt: list[Any] = []
        if runtime_metrics is not False:
            rt = runtime.register_otel(meter, enabled=runtime.runtime_enabled(
                enabled, auto=runtime_metrics == "auto"))
        return (_register_watcher_otel(self, meter) + rt + pool.register_otel(meter, enabled=enabled)
                + cluster.register_otel(meter, self.recorder, enabled=enabled))

    def _otel_is_enabled(self) -> bool:
        return self._otel_enabled


def running_watchers() -> list[Watcher]:
    """The watchers started (and not stopped) in this process."""
    return list(_started)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process's running watcher thread(s), as each measures
    itself with ``time.thread_time`` (for benchmarks: sample twice, divide by the wall time)."""
    return sum(w.cpu_seconds for w in running_watchers())


def measure_cpu(duration: float = 10.0, interval: float = DEFAULT_INTERVAL,
                recorder: Optional[Recorder] = None) -> dict[str, float]:
    """Run a stand-alone watcher for ``duration`` seconds at ``interval`` and report its cost:
    ``cpu_seconds``, ``wall_seconds``, ``cpu_per_second``, ``iterations``, ``interval``.

    With no ``recorder`` a fresh one is used (nothing is reported anywhere). The watcher reads
    the connector's cache as it finds it, like the real one.
    """
    w = Watcher(recorder if recorder is not None else Recorder(),
                SimpleNamespace(watcher_interval=interval))
    w.start()
    try:
        time.sleep(duration)
    finally:
        w.stop()
    return {"cpu_seconds": w.cpu_seconds, "wall_seconds": w._run_seconds,
            "cpu_per_second": w.cpu_seconds_per_second(), "iterations": float(w.iterations),
            "interval": w.interval}


def _strategy_hook_known() -> tuple[bool, Optional[str]]:
    """(is the strategy-cache hook installed, the colour it last saw cache A hold)."""
    mod = sys.modules.get("e6observe.hooks.strategy_cache")
    if mod is None:
        return False, None
    getter = getattr(mod, "known_strategy", None)
    if callable(getter):
        cache = mod.installed_cache()
        return cache is not None, getter()
    cache = mod.installed_cache()
    interp = getattr(cache, "_e6observe", None) if cache is not None else None
    if interp is None:
        return False, None
    known = getattr(interp, "known", None)
    return True, known if known in M.STRATEGIES else None


def _tell_strategy_hook(to: str) -> None:
    """Tell the strategy-cache hook that the colour it last knew is now ``to``.

    The hook compares each write with the last colour it saw; without this, the connector's
    next ordinary write of ``to`` would make the hook count the switch the watcher has already
    counted.
    """
    mod = sys.modules.get("e6observe.hooks.strategy_cache")
    if mod is None:
        return
    with contain("watcher.hook_sync"):
        note = getattr(mod, "note_observed", None)
        if callable(note):
            note(to)
            return
        cache = mod.installed_cache()
        interp = getattr(cache, "_e6observe", None) if cache is not None else None
        if interp is not None and hasattr(interp, "known"):
            with interp._lock:
                interp.known = to


def _live_multiprocess_flushes() -> list[Callable[[], Any]]:
    """``flush`` of every live multi-process PrometheusSink (none if the sink is not loaded)."""
    mod = sys.modules.get("e6observe.sinks.prometheus")
    live = getattr(mod, "_LIVE", None) if mod is not None else None
    if not live:
        return []
    return [s.flush for s in list(live) if getattr(s, "multiprocess", False)]


#: Every gauge the watcher exports, in exposition order.
WATCHER_GAUGES = (M.WATCHER_LAST_RUN, M.PENDING_AGE, M.CACHE_AGE, M.QUERY_MAP_ENTRIES,
                  M.SESSION_INVALIDATED, M.CONNECTIONS_OPEN, M.QUERY_MAP_INHERITED,
                  M.STRATEGY_LOCK_HELD_AT_FORK)
#: Of those, the ones that count things (OpenTelemetry up-down counters, not gauges).
_COUNTS = frozenset({M.QUERY_MAP_ENTRIES.prom_name, M.CONNECTIONS_OPEN.prom_name,
                     M.QUERY_MAP_INHERITED.prom_name})


class WatcherCollector:
    """Prometheus collector for the watcher's heartbeat and the connector cache's health."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def describe(self) -> list[Any]:
        return []  # registering must not read the connector's cache

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        out: list[Any] = []
        with contain("watcher.collect"):
            values = self.watcher.readings()
            for spec in WATCHER_GAUGES:
                value = values.get(spec.prom_name)
                if value is not None:
                    out.append(GaugeMetricFamily(spec.prom_name, spec.help, value=value))
        return iter(out)


def _register_watcher_otel(watcher: Watcher, meter: Any) -> list[Any]:
    from .runtime import otel_observable

    shared: dict[str, Any] = {"at": 0.0, "values": {}}
    shared_lock = threading.Lock()

    def values() -> dict[str, float]:
        # The callbacks of one collection share one reading.
        now = time.monotonic()
        with shared_lock:
            if now - shared["at"] > 0.25:
                shared["values"] = watcher.readings()
                shared["at"] = now
            return shared["values"]  # type: ignore[no-any-return]

    def cb_for(name: str) -> Callable[[], list[tuple[float, dict[str, Any]]]]:
        def cb() -> list[tuple[float, dict[str, Any]]]:
            v = values().get(name)
            return [] if v is None else [(v, {})]
        return cb

    return [otel_observable(meter, spec, "updown" if spec.prom_name in _COUNTS else "gauge",
                            cb_for(spec.prom_name), "watcher.otel", watcher._otel_is_enabled)
            for spec in WATCHER_GAUGES if spec.otel_name]


__all__ = ["Watcher", "WatcherCollector", "CacheReading", "track_connection", "open_connections",
           "running_watchers", "cpu_seconds", "measure_cpu",
           "validate_interval", "THREAD_NAME", "DEFAULT_INTERVAL"]
