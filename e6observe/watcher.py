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

import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Optional

from . import _fork, _forkhazards, connections
from . import metrics as M
from ._safe import contain
from .config import Options
from .connections import open_connections
from .hooks import strategy_cache
from .recorder import Recorder, norm_strategy

#: Thread name; tests and ``uninstrument()`` look for it.
THREAD_NAME = "e6observe-watcher"
DEFAULT_INTERVAL = Options.watcher_interval
#: The thread waits at least this long between iterations, whatever the interval (a watcher
#: spinning faster than 100 Hz would only burn CPU).
MIN_INTERVAL = 0.01


def _connector_cache() -> Optional[Any]:
    """The connector's live cache A, or None when the connector is not importable.

    Looked up on every read: the strategy-cache hook may replace the module global.
    """
    try:
        from e6data_python_connector import e6data_grpc
    except Exception:
        return None
    return getattr(e6data_grpc, "_local_strategy_cache", None)


class CacheReading:
    """One lock-free reading of the connector's cache A (strategies already normalised)."""

    __slots__ = ("active", "pending", "last_check_time", "query_map_entries", "session_invalidated")

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

    ``options``: the validated :class:`~e6observe.config.Options` (None: the defaults); the
    watcher reads ``watcher_interval``. ``start()`` and ``stop()`` are idempotent and may be
    called in any order.
    """

    def __init__(self, recorder: Recorder, options: Optional[Options] = None) -> None:
        self.recorder = recorder
        self.options = options if options is not None else Options()
        #: Seconds between iterations (validated once, by ``Options``).
        self.interval = float(self.options.watcher_interval)
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
        _fork.register("locks", connections.reset_after_fork, "fork.connections")
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
        """Call ``fn()`` once per iteration (contained): ``instrument()`` adds the multi-process
        Prometheus sink's ``flush``."""
        if fn not in self._flushers:
            self._flushers.append(fn)

    def _flush(self) -> None:
        for fn in list(self._flushers):
            with contain("watcher.multiprocess"):
                fn()

    # -- readings (collection time) -----------------------------------------------------------
    def pending_age(self, reading: Optional[CacheReading] = None, now: Optional[float] = None) -> float:
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
        """Every watcher gauge by Prometheus name, read now (``readers.watcher_reader`` keys
        them by the table's specs for the sinks). Cache-age is left out until the connector has
        learned a strategy (there is no age to report)."""
        now = time.time()
        out: dict[str, float] = {
            M.WATCHER_LAST_RUN.prom_name: self.last_run,
            M.CONNECTIONS_OPEN.prom_name: float(open_connections()),
        }
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

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds the watcher thread has run since it started."""
        return self._run_seconds

    def cpu_seconds_per_second(self) -> float:
        """The watcher thread's CPU use per wall-clock second since start (0 before the first
        iteration). For the benchmark: start a watcher at the default interval, wait, read."""
        run = self._run_seconds
        return self._cpu_seconds / run if run > 0 else 0.0

    # -- export ---------------------------------------------------------------------------------
    def exporting(self) -> bool:
        """True while started: the OpenTelemetry callbacks of the per-process readers report
        nothing otherwise (an instrument cannot be removed). See ``e6observe.readers``."""
        return self._otel_enabled


def running_watchers() -> list[Watcher]:
    """The watchers started (and not stopped) in this process."""
    return list(_started)


def _strategy_hook_known() -> tuple[bool, Optional[str]]:
    """(is the strategy-cache hook reporting, the colour it last saw cache A hold)."""
    known = strategy_cache.known_strategy()
    return strategy_cache.reporting(), known if known in M.STRATEGIES else None


def _tell_strategy_hook(to: str) -> None:
    """Tell the strategy-cache hook that the colour it last knew is now ``to``.

    The hook compares each write with the last colour it saw; without this, the connector's
    next ordinary write of ``to`` would make the hook count the switch the watcher has already
    counted.
    """
    with contain("watcher.hook_sync"):
        strategy_cache.note_observed(to)


__all__ = ["Watcher", "CacheReading", "THREAD_NAME", "DEFAULT_INTERVAL"]
