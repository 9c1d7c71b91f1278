"""The recorder: one in-process store that every hook writes to and every sink reads from.

Each observation is recorded once, on the hot path, into a pre-bound child (a histogram or a
counter for one label set); a histogram observation is one lock-free list append, folded into
the bucket counts in batches. Sinks never sit on the hot path: Prometheus renders the store at
scrape time, OpenTelemetry reads it from observable callbacks and takes each histogram's
per-bucket delta since its last collection (only while an OpenTelemetry sink is attached).
Strategy events update the state and counters synchronously (so /metrics shows a switch the
moment it is applied) and are handed to subscribers (log records, span events, the event
stream) by a dispatcher thread, because the hook that reports them may be running under the
connector's ``_strategy_lock``.

Label values are normalised here to bounded sets (see ``metrics.py``): whatever a server sends,
the number of series stays fixed.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from typing import Callable, Optional

from . import _fork
from . import metrics as M
from ._colours import LABEL
from ._safe import contain, record_internal_error
from .events import Event, EventRing

#: RPC method names the connector may call; anything else is labelled ``other``.
try:  # the connector's own descriptor is the source of truth
    from e6data_python_connector.server import e6x_engine_pb2 as _pb

    RPC_METHODS: frozenset[str] = frozenset(
        m.name for s in _pb.DESCRIPTOR.services_by_name.values() for m in s.methods
    )
except Exception:  # pragma: no cover - connector missing or changed
    RPC_METHODS = frozenset()
GRPC_CODES = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
RETRY_REASONS = frozenset({"mismatch", "access_denied", "resume", "other"})
#: The auto-resume cluster manager's ClusterService methods, as labelled (hooks/cluster.py).
CLUSTER_RPC_METHODS = frozenset({"cluster.status", "cluster.resume", "cluster.suspend"})

#: Raw values a histogram child takes on its ``pending`` list before the observing thread folds
#: them into the bucket counts itself (readers fold whatever is pending first). Bounds the list.
FOLD_AT = 256
#: From this many pending values a fold sorts them and bisects once per bucket instead of once
#: per value (fewer values: the per-value bisect is cheaper than a pass over the buckets).
_SORT_FOLD_FROM = 32


def norm_strategy(value: object) -> str:
    """Map anything to a bounded label: blue, green, none (unset) or invalid."""
    if type(value) is str:
        label = LABEL.get(value)  # the values the connector writes: one lookup
        if label is not None:
            return label
    if value is None or value == "" or value == b"":
        return "none"
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return "invalid"
    if isinstance(value, str) and len(value) <= 16:
        low = value.strip().lower()
        if low in M.STRATEGIES:
            return low
    return "invalid"


def norm_method(value: object) -> str:
    """``/ns.QueryEngineService/prepareStatement`` or ``prepareStatement`` -> bounded name."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        name = value.rsplit("/", 1)[-1]
        if name in RPC_METHODS:
            return name
    return "other"


def norm_code(value: object) -> str:
    """A grpc.StatusCode (or its name) -> its bounded name."""
    name = getattr(value, "name", value)
    return name if isinstance(name, str) and name in GRPC_CODES else "UNKNOWN"


class OtelDelta:
    """What a histogram child observed since the OpenTelemetry sink last took it: per-bucket
    counts and sums, min, max. Fixed size whatever the rate or the export interval."""

    __slots__ = ("counts", "sums", "min", "max", "n")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sums = [0.0] * buckets
        self.min = math.inf
        self.max = -math.inf
        self.n = 0


class Histogram:
    """Bucket counts for one label set.

    The hot path is ``pending.append(value)`` (one C call, atomic under the GIL, no lock), then
    ``fold()`` once ``len(pending) >= FOLD_AT``; :meth:`observe` does exactly that. ``fold``
    moves pending values into the counts under the child's lock; every reader (``snapshot``,
    ``counts``, ``sum``, ``count``, ``take_otel``) folds first, so nothing observed is ever missed.
    ``pending`` is never rebound (hooks may hold the child): it is emptied in place.
    """

    __slots__ = ("labels", "bounds", "pending", "_counts", "_sum", "_count", "exemplars", "otel", "_lock")

    def __init__(self, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self.pending: list[float] = []
        self._counts = [0] * (len(bounds) + 1)  # last slot is +Inf
        self._sum = 0.0
        self._count = 0
        #: bucket index -> (trace_id hex, span_id hex, value, unix time); set only when traced.
        self.exemplars: dict[int, tuple[str, str, float, float]] = {}
        #: Set while an OpenTelemetry sink reads this recorder.
        self.otel: Optional[OtelDelta] = None
        self._lock = threading.Lock()

    def observe(self, value: float, exemplar: Optional[tuple[str, str]] = None) -> None:
        p = self.pending
        p.append(value)
        if len(p) >= FOLD_AT:
            self.fold()
        if exemplar is not None:
            i = bisect_left(self.bounds, value)
            self.exemplars[i] = (exemplar[0], exemplar[1], value, time.time())

    def fold(self) -> None:
        """Move the pending values into the bucket counts (and the OpenTelemetry delta)."""
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        p = self.pending
        n = len(p)
        if not n:
            return
        values = p[:n]
        del p[:n]  # appends that raced in after the copy stay pending
        bounds = self.bounds
        counts = self._counts
        o = self.otel
        if n < _SORT_FOLD_FROM:  # a reader's fold of a few values: one bisect each
            index = [bisect_left(bounds, v) for v in values]
            for i in index:
                counts[i] += 1
            if o is not None:
                oc, os_ = o.counts, o.sums
                for i, v in zip(index, values):
                    oc[i] += 1
                    os_[i] += v
        else:
            # A full batch (the observing thread's, every FOLD_AT values): sorted once in C, then
            # each bucket is one bisect and one slice, no Python step per value (a bisect per
            # value compares generically: ~1 250 instructions per value, ~350 this way).
            values.sort()
            lo = 0
            for i, bound in enumerate(bounds):
                hi = bisect_right(values, bound, lo)
                if hi != lo:
                    counts[i] += hi - lo
                    if o is not None:
                        o.counts[i] += hi - lo
                        o.sums[i] += sum(values[lo:hi])
                    lo = hi
                    if lo == n:
                        break
            if lo < n:  # above the last bound: +Inf
                counts[-1] += n - lo
                if o is not None:
                    o.counts[-1] += n - lo
                    o.sums[-1] += sum(values[lo:])
        self._sum += sum(values)
        self._count += n
        if o is not None:
            o.n += n
            lo_v, hi_v = min(values), max(values)
            if lo_v < o.min:
                o.min = lo_v
            if hi_v > o.max:
                o.max = hi_v

    def snapshot(self) -> tuple[list[int], float, int]:
        """(per-bucket counts, sum, count), consistent with each other."""
        with self._lock:
            self._fold_locked()
            return list(self._counts), self._sum, self._count

    @property
    def counts(self) -> list[int]:
        return self.snapshot()[0]

    @property
    def sum(self) -> float:
        return self.snapshot()[1]

    @property
    def count(self) -> int:
        return self.snapshot()[2]

    def start_otel(self, on: bool) -> None:
        """Start (from now on) or stop accumulating the OpenTelemetry delta."""
        with self._lock:
            self._fold_locked()  # what came before belongs to no OpenTelemetry interval
            self.otel = OtelDelta(len(self.bounds) + 1) if on else None

    def take_otel(self) -> Optional[OtelDelta]:
        """The OpenTelemetry delta since the last take (None if nothing new, or not started)."""
        with self._lock:
            self._fold_locked()
            o = self.otel
            if o is None or not o.n:
                return None
            self.otel = OtelDelta(len(o.counts))
            return o

    def reset(self) -> None:
        """Zero everything (a forked child's fresh store)."""
        self._lock = threading.Lock()
        self.pending.clear()
        self._counts = [0] * len(self._counts)
        self._sum = 0.0
        self._count = 0
        self.exemplars = {}
        if self.otel is not None:
            self.otel = OtelDelta(len(self._counts))


class Counter:
    __slots__ = ("labels", "value", "_lock")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def reset(self) -> None:
        """Zero, with a fresh lock (a forked child's fresh store)."""
        self._lock = threading.Lock()
        self.value = 0.0


class Family:
    """All children of one metric, keyed by label-value tuple (values already normalised)."""

    def __init__(self, spec: M.MetricSpec) -> None:
        self.spec = spec
        self.children: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        self.otel_enabled = False

    def child(self, labels: tuple[str, ...]) -> object:
        c = self.children.get(labels)
        if c is None:
            with self._lock:
                c = self.children.get(labels)
                if c is None:
                    if self.spec.kind == "histogram":
                        h = Histogram(labels, self.spec.buckets)
                        if self.otel_enabled:
                            h.otel = OtelDelta(len(h.bounds) + 1)
                        c = h
                    else:
                        c = Counter(labels)
                    self.children[labels] = c
        return c

    def histogram(self, *labels: str) -> Histogram:
        return self.child(labels)  # type: ignore[return-value]

    def counter(self, *labels: str) -> Counter:
        return self.child(labels)  # type: ignore[return-value]

    def items(self) -> list[tuple[tuple[str, ...], object]]:
        return list(self.children.items())

    def reset_after_fork(self) -> None:
        """Every child zeroed, fresh locks. Children stay the same objects (hooks may hold
        pre-bound ones); only their values reset."""
        self._lock = threading.Lock()
        for _, child in self.items():
            child.reset()  # type: ignore[attr-defined]


class ResumeEpisode:
    """One resume of the cluster, shared by every connector call waiting for it."""

    __slots__ = ("started", "real", "done")

    def __init__(self) -> None:
        self.started = time.time()
        #: The cluster was seen suspended or resuming while it was open (a resume, not a wait
        #: on a cluster that was active already).
        self.real = False
        #: Its ``ok`` was counted.
        self.done = False


class Recorder:
    """The process's single store of e6observe observations and blue/green state."""

    def __init__(self, event_capacity: int = 1024, dispatch_capacity: int = 10000) -> None:
        self.families: dict[str, Family] = {
            s.prom_name: Family(s) for s in M.ALL if s.kind in ("counter", "histogram")
        }
        self.ring = EventRing(event_capacity)
        self.created = time.time()
        #: (address, port) of the cluster, from the first connection the hooks saw (OTel's
        #: server.address / server.port).
        self.server: Optional[tuple[str, int]] = None
        # Blue/green state as this process's connector sees it (cache A, or per-connection aio).
        self.active: Optional[str] = None
        self.pending: Optional[str] = None
        self.pending_since: Optional[float] = None
        self.last_switch_time = 0.0
        #: Queries in flight per strategy label: one token each, appended when a query starts
        #: and popped when it ends (both single C calls, atomic under the GIL: no lock).
        self.in_flight_tokens: dict[str, list[None]] = {s: [] for s in M.STRATEGY_LABELS}
        self._state_lock = threading.Lock()
        # The cluster as auto-resume sees it, and the cluster manager's own strategy cache.
        self.cluster_status = "unknown"
        self.cluster_status_time = 0.0
        self.cluster_manager_active: Optional[str] = None
        self.last_resume: Optional[tuple[str, float]] = None  # (outcome, seconds)
        self._resume: Optional[ResumeEpisode] = None
        self._resumers = 0
        self._rejected_at: dict[str, float] = {}
        # Event fan-out to subscribers, off the caller's thread.
        self._subscribers: list[Callable[[Event], None]] = []
        self._queue: deque[Event] = deque()
        self._queue_cap = dispatch_capacity
        self._wake = threading.Condition(threading.Lock())
        self._dispatcher: Optional[threading.Thread] = None
        self._stopping = False
        #: The fork generation this store was last reset in (once per fork, however many
        #: owners registered its reset).
        self._fork_generation = _fork.fork_generation
        self._zero_init()

    # -- set-up ---------------------------------------------------------------------------
    def _zero_init(self) -> None:
        sw = self.families[M.SWITCHES.prom_name]
        for a in M.STRATEGIES:
            for b in M.STRATEGIES:
                if a != b:
                    for cause in M.SWITCH_CAUSES:
                        sw.counter(a, b, cause)
        for kind in M.EVENT_KINDS:
            self.families[M.EVENTS.prom_name].counter(kind)
        for outcome in M.QUERY_OUTCOMES:
            for s in M.STRATEGIES:
                self.families[M.QUERY_DURATION.prom_name].histogram(s, outcome)
        self.families[M.SWITCH_DRAIN.prom_name].histogram()
        for outcome in M.RESUME_OUTCOMES:  # at 0 from start-up: increase() sees the first
            self.families[M.CLUSTER_RESUMES.prom_name].counter(outcome)
            self.families[M.CLUSTER_RESUME_DURATION.prom_name].histogram(outcome)
        scoped = self.families[M.SCOPED_SWITCHES.prom_name]
        for scope in M.SWITCH_SCOPES[1:]:
            scoped.counter("blue", "green", scope)
            scoped.counter("green", "blue", scope)
        for reason in M.REJECTED_REASONS:
            self.families[M.STRATEGY_REJECTED.prom_name].counter(reason)

    def family(self, spec: M.MetricSpec) -> Family:
        return self.families[spec.prom_name]

    def enable_otel(self, enabled: bool = True) -> None:
        """Start (or stop) accumulating per-histogram deltas for the OpenTelemetry sink."""
        for fam in self.families.values():
            if fam.spec.kind != "histogram":
                continue
            fam.otel_enabled = enabled
            for _, h in fam.items():
                h.start_otel(enabled)  # type: ignore[attr-defined]

    # -- hot path ---------------------------------------------------------------------------
    def rpc_histogram(self, method: str, strategy: str, code: str) -> Histogram:
        """The pre-bound child for one (method, strategy, code); callers may cache it."""
        return self.families[M.RPC_DURATION.prom_name].histogram(method, strategy, code)

    @property
    def in_flight(self) -> dict[str, int]:
        """Queries in flight per strategy label."""
        return {s: len(t) for s, t in list(self.in_flight_tokens.items())}

    def query_started(self, strategy: str) -> None:
        tokens = self.in_flight_tokens.get(strategy)
        if tokens is None:  # labels are normalised; this is only a guard
            tokens = self.in_flight_tokens.setdefault(strategy, [])
        tokens.append(None)

    def query_finished(
        self, strategy: str, outcome: str, seconds: float, exemplar: Optional[tuple[str, str]] = None
    ) -> None:
        try:
            self.in_flight_tokens[strategy].pop()
        except (KeyError, IndexError):  # ended without a start we saw (instrumented mid-query)
            pass
        self.query_histogram(strategy, outcome).observe(seconds, exemplar)

    def query_histogram(self, strategy: str, outcome: str) -> Histogram:
        """The pre-bound query-duration child for one (strategy, outcome); callers may cache it."""
        return self.families[M.QUERY_DURATION.prom_name].histogram(strategy, outcome)

    def reset_in_flight(self) -> None:
        """No query in flight (a forked child's fresh store): emptied in place."""
        for tokens in list(self.in_flight_tokens.values()):
            tokens.clear()

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh per-process store. New locks, zeroed counters and
        histograms, an empty event ring, no query in flight, a running dispatcher if there are
        subscribers (the parent's did not survive the fork; its condition may have been held);
        the blue/green state is kept. Once per fork: later calls in the same child do nothing.
        """
        if self._fork_generation == _fork.fork_generation:
            return
        self._fork_generation = _fork.fork_generation
        self._state_lock = threading.Lock()
        self.reset_in_flight()
        self.created = time.time()
        for fam in list(self.families.values()):
            fam.reset_after_fork()
        self.ring.reset()
        self._queue.clear()
        self._wake = threading.Condition(threading.Lock())
        self._dispatcher = None
        self._stopping = False
        if self._subscribers:
            self._start_dispatcher()

    # -- strategy events ----------------------------------------------------------------------
    def detected(self, strategy: str, scope: str = "process") -> None:
        """The first strategy this process (or, with ``scope``, that cache) learned."""
        if scope != "process":
            self._scoped_colour(scope, strategy)
            self._emit("detected", to_strategy=strategy, strategy=strategy, scope=scope)
            return
        with self._state_lock:
            self.active = strategy
        self._emit("detected", to_strategy=strategy, strategy=strategy)

    def announced(self, to: str, scope: str = "process") -> None:
        """The server announced ``to``; the connector will apply it once queries drain."""
        if scope != "process":
            self._emit("announced", to_strategy=to, strategy=to, scope=scope)
            return
        with self._state_lock:
            if self.pending == to:
                return
            self.pending = to
            self.pending_since = time.time()
            frm = self.active or "none"
        self._emit("announced", from_strategy=frm, to_strategy=to, strategy=frm)

    def applied(self, frm: str, to: str, cause: str, pinned_queries: int = 0, scope: str = "process") -> None:
        """A switch from ``frm`` to ``to``: counted once, visible on /metrics immediately.

        ``scope`` other than ``process``: a switch of the cluster manager's own cache or of one
        connection, counted in ``e6data_strategy_scoped_switches_total`` only (the process
        state and ``e6data_strategy_switches_total`` are left alone)."""
        if scope != "process":
            self._scoped_colour(scope, to)
            self.families[M.SCOPED_SWITCHES.prom_name].counter(frm, to, scope).inc()
            self._emit("applied", from_strategy=frm, to_strategy=to, cause=cause, strategy=to, scope=scope)
            return
        now = time.time()
        with self._state_lock:
            drain = (
                (now - self.pending_since)
                if (self.pending_since is not None and cause == "announced")
                else None
            )
            self.active = to
            self.pending = None
            self.pending_since = None
            self.last_switch_time = now
        self.families[M.SWITCHES.prom_name].counter(frm, to, cause).inc()
        if drain is not None:
            self.families[M.SWITCH_DRAIN.prom_name].histogram().observe(drain)
        self._emit(
            "applied",
            from_strategy=frm,
            to_strategy=to,
            cause=cause,
            drain_seconds=drain,
            pinned_queries=pinned_queries,
            strategy=to,
        )

    def mismatch(self, strategy: str, method: str) -> None:
        self.families[M.MISMATCHES.prom_name].counter(strategy, method).inc()
        self._emit("mismatch", strategy=strategy, method=method)

    def cache_cleared(self, was: str, scope: str = "process") -> None:
        if scope != "process":
            self._scoped_colour(scope, None)
            self._emit("cache_cleared", from_strategy=was, strategy=was, scope=scope)
            return
        with self._state_lock:
            self.pending = None
            self.pending_since = None
        self._emit("cache_cleared", from_strategy=was, strategy=was)

    def retry(self, attempt: int, reason: str) -> None:
        reason = reason if reason in RETRY_REASONS else "other"
        self.families[M.RETRIES.prom_name].counter(reason).inc()
        self._emit("retry", attempt=attempt, reason=reason, strategy=self.active or "none")

    def _scoped_colour(self, scope: str, colour: Optional[str]) -> None:
        if scope == "cluster_manager":
            self.cluster_manager_active = colour if colour in M.STRATEGIES else None

    # -- auto-resume (hooks/cluster.py) -------------------------------------------------------
    def cluster_status_seen(self, status: object, method: str = "", engine: bool = False) -> None:
        """The connector saw the cluster's status: a ClusterService ``status`` answer, or
        (``engine=True``) a ``status: 503`` from an engine RPC ``method``, read as "suspended"
        unless a resume is already under way. ``suspended_seen`` is emitted once per suspension."""
        label = status if status in M.CLUSTER_STATUSES else "other"
        with self._state_lock:
            prev = self.cluster_status
            if engine and prev in ("suspended", "resuming"):
                return
            self.cluster_status = label
            self.cluster_status_time = time.time()
            ep = self._resume
            start = ep is not None and not ep.real and label in ("suspended", "resuming")
            if start:
                ep.real = True  # type: ignore[union-attr]
        if label == "suspended" and prev not in ("suspended", "resuming"):
            self._emit("suspended_seen", method=method, cluster_status=label, strategy=self.active or "none")
        if start:
            self._emit("resume_started", cluster_status=label, strategy=self.active or "none")

    def resume_begin(self) -> ResumeEpisode:
        """A connector call that resumes the cluster (or waits for another one to) begins.

        Calls that overlap share one episode: one resume of the cluster is counted once
        whatever the number of threads or connections waiting for it. An episode becomes a
        resume (``resume_started``) when the cluster is seen suspended or resuming."""
        with self._state_lock:
            self._resumers += 1
            ep = self._resume
            if ep is None:
                ep = self._resume = ResumeEpisode()
            start = not ep.real and self.cluster_status in ("suspended", "resuming")
            if start:
                ep.real = True
        if start:
            self._emit("resume_started", cluster_status=self.cluster_status, strategy=self.active or "none")
        return ep

    def resume_end(self, ep: ResumeEpisode, outcome: str) -> Optional[float]:
        """A call begun by :meth:`resume_begin` ended with ``outcome`` (ok, failed, timeout).

        Counted: the first ``ok`` of an episode that saw the cluster suspended or resuming (a
        call that found it active already waited for another one's resume), and every failure
        or timeout. Returns the duration counted, or None when nothing was counted."""
        outcome = outcome if outcome in M.RESUME_OUTCOMES else "failed"
        now = time.time()
        with self._state_lock:
            self._resumers -= 1
            count = (ep.real and not ep.done) if outcome == "ok" else True
            if outcome == "ok" and count:
                ep.done = True
            if self._resume is ep and (ep.done or outcome != "ok" or self._resumers <= 0):
                self._resume = None
            seconds = max(0.0, now - ep.started)
            if count:
                self.last_resume = (outcome, seconds)
                if outcome == "ok":
                    self.cluster_status, self.cluster_status_time = "active", now
        if not count:
            return None
        self.families[M.CLUSTER_RESUMES.prom_name].counter(outcome).inc()
        self.families[M.CLUSTER_RESUME_DURATION.prom_name].histogram(outcome).observe(seconds)
        self._emit(
            "resume_finished",
            outcome=outcome,
            duration_seconds=seconds,
            cluster_status=self.cluster_status,
            strategy=self.active or "none",
        )
        return seconds

    def resuming(self) -> bool:
        """True while a resume episode that saw the cluster suspended is open."""
        ep = self._resume
        return ep is not None and ep.real and not ep.done

    def strategy_rejected(self, reason: str, min_interval: float = 5.0) -> None:
        """The connector refused an announced strategy value: counted each time; the event at
        most once per ``reason`` per ``min_interval`` seconds (a refusing login recurses)."""
        reason = reason if reason in M.REJECTED_REASONS else "unknown"
        self.families[M.STRATEGY_REJECTED.prom_name].counter(reason).inc()
        now = time.monotonic()
        last = self._rejected_at.get(reason)
        if last is not None and now - last < min_interval:
            return
        self._rejected_at[reason] = now
        self._emit("strategy_rejected", reason=reason, strategy=self.active or "none")

    def _emit(self, kind: str, **fields: object) -> Event:
        ev = Event(0, kind, **fields)  # type: ignore[arg-type]  # seq: taken by ring.append
        self.families[M.EVENTS.prom_name].counter(kind).inc()
        self.ring.append(ev)
        if self._subscribers:
            with self._wake:
                if len(self._queue) >= self._queue_cap:
                    self.families[M.EVENTS_DROPPED.prom_name].counter("dispatch").inc()
                else:
                    self._queue.append(ev)
                self._wake.notify()
        return ev

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` for every later event, on the dispatcher thread, contained."""
        self._subscribers.append(fn)
        self._start_dispatcher()

    def unsubscribe(self, fn: Callable[[Event], None]) -> None:
        try:
            self._subscribers.remove(fn)
        except ValueError:
            pass

    def _start_dispatcher(self) -> None:
        if self._dispatcher is not None and self._dispatcher.is_alive():
            return
        self._stopping = False
        t = threading.Thread(target=self._dispatch_loop, name="e6observe-dispatch", daemon=True)
        self._dispatcher = t
        t.start()

    def _dispatch_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            for ev in batch:
                for fn in list(self._subscribers):
                    try:
                        fn(ev)
                    except Exception as exc:
                        record_internal_error("event.subscriber", exc)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until queued events reached subscribers (tests, shutdown). True if drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._wake:
                if not self._queue:
                    break
            time.sleep(0.001)
        else:
            return False
        time.sleep(0.002)  # let the in-hand batch finish
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the dispatcher thread (after delivering what is queued)."""
        t = self._dispatcher
        if t is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if t is not threading.current_thread():
            t.join(timeout)
        self._dispatcher = None

    # -- reads for sinks --------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        with self._state_lock:
            return {
                "active": self.active,
                "pending": self.pending,
                "pending_since": self.pending_since,
                "last_switch_time": self.last_switch_time,
                "in_flight": self.in_flight,
            }

    def switch_total(self) -> float:
        """All switches counted so far (any direction, any cause)."""
        return sum(c.value for _, c in self.families[M.SWITCHES.prom_name].items())  # type: ignore[attr-defined]


_current: Optional[Recorder] = None
_current_lock = threading.Lock()


def get_recorder() -> Optional[Recorder]:
    """The recorder of the active instrumentation, or None when not instrumented."""
    return _current


def set_recorder(rec: Optional[Recorder]) -> None:
    global _current
    _fork.register("locks", _renew_lock_after_fork, "fork.recorder")
    _fork.register("stores", _reset_current_after_fork, "fork.recorder")
    with _current_lock:
        _current = rec


def _renew_lock_after_fork() -> None:
    global _current_lock
    _current_lock = threading.Lock()


def _reset_current_after_fork() -> None:
    rec = _current
    if rec is not None:
        rec.reset_after_fork()


__all__ = [
    "Recorder",
    "Histogram",
    "Counter",
    "Family",
    "get_recorder",
    "set_recorder",
    "norm_strategy",
    "norm_method",
    "norm_code",
    "contain",
]
