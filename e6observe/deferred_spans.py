"""Deferred query spans (``query_spans="deferred"``): the span is built off the querying thread.

In the default ``current`` mode the querying thread starts the query's span, makes it current
around the connector's calls and ends it; the OpenTelemetry SDK's own work for one span (start,
attributes, end, the batch processor's ``on_end``) is about 180 000 instructions, ~11 % of a
bare query (BENCHMARKS.md, issue 17). In ``deferred`` mode the querying thread only records what
the span will say - start and end time, the context it ran in (the span's parent), the
statement's name and attributes, strategy, outcome, error, the strategy events that happened
while it ran (with their timestamps) and the auto-resume wait - into a bounded queue, and the
``e6observe-spans`` thread builds it: ``tracer.start_span(..., context=parent,
start_time=...)`` and ``span.end(end_time=...)``. The exported span has the same name,
attributes, status, events and parent as in ``current`` mode.

What is given up: the span is not current while the connector runs the query, so spans other
instrumentations start for its RPCs (``opentelemetry-instrumentation-grpc``) and log records
emitted inside it are not its children (they nest under the query's parent instead). The
latency histogram's exemplar for the query is set when the span is built (a moment later).

Bounds: at most :data:`CAPACITY` finished queries wait for the thread; one more is dropped and
counted in ``e6observe_events_dropped_total{sink="query_spans"}`` - the querying thread never
blocks and never waits for the thread. A span the thread fails to build is counted in
``e6observe_internal_errors_total{component="tracing.deferred"}``. ``uninstrument()`` builds
what is queued (for at most :data:`CLOSE_BUDGET` seconds; the rest is dropped and counted) and
stops the thread. In a forked child the parent's queue is dropped (the parent builds those
spans) and the thread starts again.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Optional

from . import _fork
from . import metrics as M
from ._otelctx import PendingSpan
from ._safe import record_internal_error
from .events import Event
from .recorder import Recorder
from .tracing import QueryTracer, _status_code

_COMPONENT = "tracing.deferred"
#: Finished queries waiting for the span thread at most (one more is dropped and counted).
CAPACITY = 4096
#: The thread wakes at least this often (seconds) to build what is queued.
INTERVAL = 0.5
#: It is woken early once this many queries wait.
WAKE_AT = 256
#: Spans built between two short sleeps (~0.25 ms of work): a querying thread back from an RPC
#: gets the GIL within that, not after the interpreter's 5 ms switch interval. A sleep, not
#: ``sleep(0)``: releasing the GIL for no time lets this thread take it straight back.
CHUNK = 4
YIELD_SECONDS = 0.0002
#: Span events kept per query (the SDK's default span limit: more would be dropped there).
MAX_EVENTS = 128
#: Child spans (auto-resume waits) kept per query.
MAX_CHILDREN = 8
#: Seconds ``close()`` spends building what is still queued.
CLOSE_BUDGET = 2.0
THREAD_NAME = "e6observe-spans"


class _PendingChild:
    """An INTERNAL child span of a deferred query (the auto-resume wait)."""

    __slots__ = ("name", "start_ns", "end_ns", "attributes", "error")

    def __init__(self, name: str, start_ns: int) -> None:
        self.name = name
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes: Optional[dict[str, Any]] = None
        self.error = False


class DeferredQueryTracer(QueryTracer):
    """A :class:`~e6observe.tracing.QueryTracer` whose spans are built by a background thread.

    ``start`` returns a :class:`~e6observe._otelctx.PendingSpan` (never made current: the hooks
    and :func:`~e6observe._otelctx.attach_span` leave it alone); ``finish`` queues it."""

    deferred = True

    def __init__(self, tracer_provider: Any, recorder: Recorder, record_query_text: bool = False) -> None:
        super().__init__(tracer_provider, recorder, record_query_text)
        self._queue: deque[PendingSpan] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        #: Spans built, and queries dropped because the queue was full (tests, benchmarks).
        self.built = 0
        self.dropped = 0
        from opentelemetry.trace import SpanKind

        self._internal = SpanKind.INTERNAL
        self._spawn()
        _fork.register("stores", self._drop_queue_after_fork, "fork.tracing")
        _fork.register("threads", self._restart_after_fork, "fork.tracing")

    # -- the querying thread ----------------------------------------------------------------
    def start(
        self,
        query: object,
        host: object = None,
        port: object = None,
        namespace: Optional[str] = None,
        context: Any = None,
    ) -> Any:
        """Record the start of one query's span (nothing of the SDK is called)."""
        # The statement-cache lookup is QueryTracer.start's, written out here too: a shared
        # helper would be one more Python call on every traced query.
        if type(query) is str:
            statements = self._statements
            key = hash(query)
            described = statements.pop(key, None)  # and put back last: least recently used first
            if described is None:
                described = self._new_statement(query)
            statements[key] = described
        else:
            described = None
        p = PendingSpan(described, host, port, namespace, self.current() if context is None else context)
        self._in_flight.add(p)  # one C call: no lock needed to add (see finish)
        return p

    def _new_statement(self, query: str) -> tuple[str, dict[str, Any], Optional[str]]:
        from .tracing import SUMMARY_CACHE, _describe

        if len(self._statements) >= SUMMARY_CACHE:
            self._forget_oldest()
        return _describe(query, self._record_text)

    def finish(
        self,
        span: Any,
        strategy: str,
        outcome: str,
        exc: Optional[BaseException] = None,
        histogram: Any = None,
        seconds: float = 0.0,
    ) -> None:
        """Record the end of ``span`` and queue it for the span thread (never blocks)."""
        with self._lock:  # no strategy event is added once it is out of the set
            self._in_flight.discard(span)
        span.end_ns = time.time_ns()
        span.strategy = strategy
        span.outcome = outcome
        if outcome != "ok":
            span.status_code = _status_code(exc)
        span.histogram = histogram
        span.seconds = seconds
        q = self._queue
        if len(q) >= CAPACITY or self._closed:
            self.dropped += 1
            self._count_drop()
            return
        q.append(span)
        if len(q) == WAKE_AT:
            self._wake.set()

    def _count_drop(self) -> None:
        try:
            self._recorder.family(M.EVENTS_DROPPED).counter("query_spans").inc()
        except Exception as exc:  # pragma: no cover - the recorder's own counter
            record_internal_error(_COMPONENT, exc)

    @staticmethod
    def exemplar(span: Any) -> Optional[tuple[str, str]]:
        """None: a deferred span's ids exist once it is built (the thread sets the exemplar)."""
        return None

    def child_span(self, parent: Any, name: str) -> Any:
        """Record an INTERNAL child of the deferred query ``parent`` (the auto-resume wait)."""
        child = _PendingChild(name, time.time_ns())
        children = parent.children
        if children is None:
            parent.children = [child]
        elif len(children) < MAX_CHILDREN:
            children.append(child)
        return child

    def end_child_span(
        self, span: Any, attributes: dict[str, Any], exc: Optional[BaseException] = None
    ) -> None:
        span.attributes = dict(attributes)
        span.error = exc is not None
        span.end_ns = time.time_ns()

    def _on_event(self, ev: Event) -> None:  # the recorder's dispatcher thread
        if not self._in_flight:
            return
        attrs = self._event_attributes(ev, self._rpc_names)
        item = (ev.name, attrs, int(ev.time_unix * 1e9))
        with self._lock:
            for p in list(self._in_flight):
                events = p.events
                if events is None:
                    p.events = [item]
                elif len(events) < MAX_EVENTS:
                    events.append(item)

    # -- the span thread --------------------------------------------------------------------
    def _spawn(self) -> None:
        t = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = t
        t.start()

    def _run(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait(INTERVAL)
            wake.clear()
            try:
                self.drain()
            except Exception as exc:  # pragma: no cover - drain contains each span's failure
                record_internal_error(_COMPONENT, exc)

    def drain(self, deadline: Optional[float] = None) -> int:
        """Build every queued span (until ``deadline``, a ``time.monotonic()`` value); returns
        how many were built. Failures are contained and counted, span by span."""
        q = self._queue
        n = 0
        while q:
            try:
                p = q.popleft()
            except IndexError:
                break
            try:
                self._build(p)
                self.built += 1
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
            n += 1
            if n % CHUNK == 0:
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(YIELD_SECONDS)  # the GIL to the application's threads
        return n

    def _build(self, p: PendingSpan) -> None:
        described = p.described
        attrs: dict[str, Any]
        if described is None:
            name, attrs, text = "e6data", {"db.system.name": "e6data"}, None
        else:
            name, attrs, text = described
            attrs = attrs.copy()
        # The attributes in the order current mode sets them (start, then end).
        if p.namespace:
            attrs["db.namespace"] = p.namespace
        host, port = p.host, p.port
        if isinstance(host, str) and host:
            attrs["server.address"] = host
        if type(port) is int or (isinstance(port, int) and not isinstance(port, bool)):
            attrs["server.port"] = port
        if text:
            attrs["db.query.text"] = text
        outcome = p.outcome
        attrs["e6data.strategy"] = p.strategy
        attrs["e6data.query.outcome"] = outcome
        from ._otelattrs import error_type

        etype = None if outcome == "ok" else error_type(outcome)
        if etype is not None:
            attrs["error.type"] = etype
            if p.status_code is not None:
                attrs["db.response.status_code"] = p.status_code
        span = self._tracer.start_span(name, p.parent, self._kind, attrs, start_time=p.start_ns)
        if p.events:
            for ename, eattrs, ts in p.events:
                span.add_event(ename, attributes=eattrs, timestamp=ts)
        if p.children:
            sctx = self.in_context(span, p.parent)
            for c in p.children:
                if c.end_ns:
                    self._build_child(c, sctx)
        if etype is not None:
            span.set_status(self._error_status)
        span.end(end_time=p.end_ns)
        h = p.histogram
        if h is not None:
            ex = QueryTracer.exemplar(span)
            if ex is not None:
                seconds = p.seconds
                h.exemplars[bisect_left(h.bounds, seconds)] = (ex[0], ex[1], seconds, p.end_ns / 1e9)

    def _build_child(self, c: _PendingChild, sctx: Any) -> None:
        from ._otelattrs import ERROR_TYPES

        attrs = dict(c.attributes or {})
        if c.error:
            attrs["error.type"] = ERROR_TYPES["error"]  # as a failed query's
        span = self._tracer.start_span(c.name, sctx, self._internal, attrs, start_time=c.start_ns)
        if c.error:
            span.set_status(self._error_status)
        span.end(end_time=c.end_ns)

    def queued(self) -> int:
        """Finished queries waiting for the span thread."""
        return len(self._queue)

    def flush(self, timeout: float = 2.0) -> bool:
        """Build what is queued now, in the calling thread (tests). True if the queue emptied."""
        self.drain(time.monotonic() + timeout)
        return not self._queue

    # -- stop, fork ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop receiving events, stop the thread, build what is queued (for at most
        :data:`CLOSE_BUDGET` seconds) and drop the rest, counted. Idempotent."""
        super().close()
        self._closed = True
        self._wake.set()
        t = self._thread
        self._thread = None
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(CLOSE_BUDGET)
        self.drain(time.monotonic() + CLOSE_BUDGET)
        left = len(self._queue)
        if left:
            self._queue.clear()
            self.dropped += left
            try:
                self._recorder.family(M.EVENTS_DROPPED).counter("query_spans").inc(left)
            except Exception as exc:  # pragma: no cover
                record_internal_error(_COMPONENT, exc)
        _fork.unregister("stores", self._drop_queue_after_fork)
        _fork.unregister("threads", self._restart_after_fork)

    def _renew_locks_after_fork(self) -> None:
        super()._renew_locks_after_fork()
        self._wake = threading.Event()

    def _drop_queue_after_fork(self) -> None:
        # The parent builds the spans it queued; the child's queries start afresh.
        self._queue.clear()

    def _restart_after_fork(self) -> None:
        self._thread = None
        if not self._closed:
            self._spawn()


__all__ = ["DeferredQueryTracer", "CAPACITY"]
