"""Async API hooks (connector 3.0.x ``e6data_python_connector.aio``, Python 3.11+).

The async connector keeps blue/green state **per connection**: ``AsyncConnection._strategy``
(starts as ``blue``, a guess), ``_pending_strategy`` and ``_routes`` (query id -> route with the
colour it was prepared under). ``_apply_pending_strategy`` flips when no route is open, and the
RPC retry and auto-resume paths assign ``_strategy`` directly - so the hook is a class-level data
descriptor on both attributes that stores into the instance ``__dict__`` (as before) and reports
every change. Equal values are re-assigned often; only changes count.

**Process-level view.** Prometheus has one ``e6data_strategy_active``; the async API has one
colour per connection. e6observe keeps a single process-level colour for the async API:

* it is *detected* from the first RPC that succeeds on any async connection (the colour in its
  ``strategy`` header) - the constructor's ``blue`` is a guess, not something learned;
* a connection moving to a colour other than the process-level one is **one switch** from the
  process-level colour to the new one (cause ``announced`` when that connection was applying
  its pending colour, ``mismatch`` when it toggled after a 456 or resumed), and the process-level
  colour becomes the new one;
* connections that follow to the colour the process already holds are not counted again.

So ``e6data_strategy_active`` names the colour most recently adopted by any async connection,
and one deployment counts as one switch per process whatever the pool size - the same meaning
the sync API's process-wide cache gives. (A process using both the sync and the async API feeds
both views into the same recorder; each view counts its own switches.)

RPCs: ``AsyncConnection._initialize`` builds the ``grpc.aio`` channel and stub; the hook wraps
it and, once it has run, replaces the stub's unary multi-callables by wrappers that add a done
callback to the call they return (the same call object - nothing is awaited or wrapped in
between). The callback reads the finished call's status and observes the duration; a 456 is a
mismatch. Queries: ``AsyncCursor.execute`` / ``_clear`` (clear and close) / ``_next_batch`` /
``cancel``, with the same semantics as the sync cursor hook; the pinned colour is the query's
route. A 456 toggle-and-retry inside ``_rpc`` is reported as ``retry(1, "mismatch")``.

The hot path (64 concurrent queries saturate one event loop, so every Python call shows): the
RPC wrapper takes ``timeout`` and ``metadata`` as parameters (the connector's call is forwarded
without building an argument tuple and dict), reads the ``strategy`` header from the first pair
(where the connector puts it) and hands the call's own Cython object a closure over the call
(one Python call when the RPC ends, OK tested first, observed inline; a closure is cheaper to
make than a ``partial``, which also builds an argument tuple and an empty keyword dict). The
cursor wrappers forward the connector's usual calls (``execute(operation)``,
``_clear(deadline)``) as plain calls, and keep each cursor's query in a map by ``id(cursor)``
(``_queries``; the entry is the weak reference to the cursor carrying the query's fields), never
on the cursor: on Python 3.11 an object's attribute values live inline until its ``__dict__`` is read or
an attribute is added past what its class's shared keys hold, and ``AsyncCursor`` already sets
all 29 it can keep - one attribute more (the sync hook's ``_e6observe_query``) turned every
instrumented cursor's values into a dict at its first query and slowed every later attribute
access of the connector on it (callgrind, one ``SELECT 1`` after another: +107 000 -> +72 000
instructions per async query over the bare 2 992 000). ``clear`` ends an untraced query
inline. The strategy descriptors define no ``__get__``, so the connector's reads of
``_strategy`` are plain instance-dict reads (only writes run Python; the connection's values
are a dict already: the connector sets more attributes on it than 3.11 keeps inline).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from functools import partial
from typing import Any, Callable, Optional

from .._colours import COLOURS, LABEL
from .._otelattrs import db_namespace
from .._otelctx import attach_span, detach
from .._safe import record_internal_error
from ..recorder import FOLD_AT, Recorder, norm_strategy
from . import Hook, HookContext, is_mismatch, outcome_of
from .cluster import QUERY_SPAN, RESUMED
from .cursor import QueryState, execute_failed, finish, positional_params
from .stubs import (
    Timer,
    aio_call_done,
    aio_status_codes,
    mark_wrapper,
    plain_call,
    strategy_from,
    unwrap_all,
    wrap_stub,
)

_COMPONENT = "hook.aio"
_MISSING = object()
#: The connector module whose import installs the hooks when instrument() ran first.
ASYNC_MODULE = "e6data_python_connector.async_connection"


def available() -> bool:
    """True when the connector has the async API and this Python can run it."""
    if sys.version_info < (3, 11):
        return False
    try:
        import e6data_python_connector.async_connection  # noqa: F401
        import e6data_python_connector.async_cursor  # noqa: F401
    except Exception:
        return False
    return True


class _AioInterpreter:
    """The process-level colour of the async API, from per-connection writes."""

    __slots__ = ("rec", "known", "_lock")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.known: Optional[str] = None
        self._lock = threading.Lock()

    def confirmed(self, strategy: Any) -> None:
        """An RPC succeeded under ``strategy``: the first such is the detection."""
        if strategy not in COLOURS:
            return
        with self._lock:
            if self.known is not None:
                return
            self.known = strategy
        self.rec.detected(strategy)

    def on_strategy(self, conn: Any, old: Any, new: Any) -> None:
        if old is _MISSING or new not in COLOURS:
            return  # the constructor's initial guess, or nothing usable
        exc = sys.exc_info()[1]
        toggled = exc is not None and is_mismatch(exc)
        if toggled:
            # _rpc toggles the colour inside its except block and replays the call once.
            self.rec.retry(1, "mismatch")
        d = conn.__dict__
        with self._lock:
            ref = self.known
            if ref is None or ref == new:
                return
            self.known = new
            # A connection can keep a stale pending colour (responses of an announcement that
            # it already applied), so the 456 toggle is recognised first.
            cause = "announced" if (not toggled and d.get("_pending_strategy") == new) else "mismatch"
        routes = d.get("_routes")
        pinned = 0
        if isinstance(routes, dict):
            pinned = sum(1 for r in list(routes.values()) if getattr(r, "strategy", None) == ref)
        self.rec.applied(ref, new, cause, pinned_queries=pinned)

    def on_pending(self, conn: Any, old: Any, new: Any) -> None:
        if new not in COLOURS or new == self.known or new == conn.__dict__.get("_strategy"):
            return
        self.rec.announced(new)


class _Watched:
    """Class-level data descriptor: instance storage as before, changes reported.

    It has ``__set__`` and no ``__get__``: a read finds the value in the instance ``__dict__``
    without running Python (the connector reads ``_strategy`` on every RPC); only a write does.
    (Read before the constructor has assigned it, the attribute gives this descriptor instead
    of raising AttributeError; the connector assigns both first thing.)"""

    __slots__ = ("name", "report")

    def __init__(self, name: str, report: Callable[[Any, Any, Any], None]) -> None:
        self.name = name
        self.report = report

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        old = d.get(self.name, _MISSING)
        d[self.name] = value
        if old is not value and old != value:
            try:
                self.report(obj, old, value)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)

    def __delete__(self, obj: Any) -> None:
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


# --- RPC timing -----------------------------------------------------------------------------
def _never() -> bool:
    return False


#: Hot-path copies of the installed context's suppression check and context getter (see
#: ``channel.py``), set by :class:`AioHook`.
_suppressed: Callable[[], bool] = _never
_ctx_now: Callable[[], Any] = _never
_perf = time.perf_counter
#: grpc's Cython status code of an OK call (an int enum: compared by value).
_CY_OK = 0


def _timed_aio_call(mc: Any, timer: Timer, interp: _AioInterpreter) -> Callable[..., Any]:
    codes = aio_status_codes()
    # grpc's own multi-callable has a plain Python ``__call__``: the wrapper calls it as
    # ``type(mc).__call__(mc, ...)``, looked up at each call (a later patch of the class is
    # honoured as by ``mc(...)``), without the type slot's second interpreter loop entered from C
    # (~1 500 instructions less per RPC with keywords, callgrind). Anything else: ``mc(...)``.
    direct = plain_call(mc)

    # grpc.aio's multi-callables take everything after the request by keyword (None when not
    # given). ``timeout`` and ``metadata`` - what the connector passes - are parameters here, so
    # the usual call is forwarded without building an argument tuple and dict.
    def timed(request: Any, *args: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any) -> Any:
        if args or kwargs:
            return _timed_other(request, args, timeout, metadata, kwargs)
        if _ctx_now() and _suppressed():  # inside suppress_instrumentation(): not measured
            return mc(request, timeout=timeout, metadata=metadata)
        try:  # the strategy header: the connector puts it first
            k, s = metadata[0]
            if k != "strategy":
                s = strategy_from((), {"metadata": metadata})
        except Exception:  # no metadata, or not pairs
            s = strategy_from((), {"metadata": metadata})
        t0 = _perf()
        if direct:
            call = type(mc).__call__(mc, request, timeout=timeout, metadata=metadata)
        else:
            call = mc(request, timeout=timeout, metadata=metadata)
        try:
            cy = call._cython_call

            def done() -> None:
                """:func:`~e6observe.hooks.stubs.aio_call_done` for this call, as a closure
                (cheaper to make than a ``partial``, which also builds an argument tuple and an
                empty keyword dict), OK tested first (an OK call cannot be a local
                cancellation: ``cancel()`` sets the status to CANCELLED). Contained."""
                dt = _perf() - t0
                try:
                    status = cy._status
                    code = status.code()
                    if code == _CY_OK:
                        h = timer.ok.get(s)  # timer.ok is mutated only, never rebound
                        if h is None:
                            h = timer.ok_child(s)
                        p = h.pending  # h.observe(dt), inlined
                        p.append(dt)
                        if len(p) >= FOLD_AT:
                            h.fold()
                        if interp.known is None:
                            interp.confirmed(s)
                    elif cy.is_locally_cancelled():
                        timer.failed("CANCELLED", None, dt, s)
                    else:
                        timer.failed(codes.get(code), status.details(), dt, s)
                except Exception as exc:
                    record_internal_error(_COMPONENT, exc)

            # What grpc's Call.add_done_callback does (partial(cb, call) on the Cython call),
            # without its Python frame. The callback runs synchronously when grpc sets the
            # call's status (inside the call's own task), not through the event loop.
            cy.add_done_callback(done)
        except AttributeError:  # not grpc's own call object: its public method
            try:
                call.add_done_callback(partial(aio_call_done, timer, interp, s, t0, codes, _COMPONENT))
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return call

    def _timed_other(request: Any, args: Any, timeout: Any, metadata: Any, kwargs: Any) -> Any:
        """Any other call shape (more keywords, or positional arguments grpc would refuse):
        forwarded as given, timed the same way (through the call's public
        ``add_done_callback``: not the hot path)."""
        if _ctx_now() and _suppressed():
            return mc(request, *args, timeout=timeout, metadata=metadata, **kwargs)
        s = strategy_from(args, {"metadata": metadata}) if metadata is not None else None
        t0 = _perf()
        call = mc(request, *args, timeout=timeout, metadata=metadata, **kwargs)
        try:
            call.add_done_callback(partial(aio_call_done, timer, interp, s, t0, codes, _COMPONENT))
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return call

    return mark_wrapper(timed, mc, timer.method)


def _make_initialize(
    orig: Callable[..., Any], ctx: HookContext, interp: _AioInterpreter
) -> Callable[..., Any]:
    async def _initialize(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await orig(self, *args, **kwargs)
        if ctx.live:
            try:
                HOOK.wrap_stub(self.__dict__.get("_client"), ctx, interp)
                ctx.track(self)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return result

    _initialize.__wrapped__ = orig  # type: ignore[attr-defined]
    return _initialize


# --- queries --------------------------------------------------------------------------------
class _AioQuery(weakref.ref):  # type: ignore[type-arg]
    """One query in flight on an async cursor: :class:`~e6observe.hooks.cursor.QueryState`'s
    fields on the weak reference to the cursor (its callback, :func:`_forget`, drops the entry
    if the cursor is collected first), and the map's key. One object made in C per query:
    no ``__init__`` frame, no separate reference, no ``partial`` for the callback."""

    __slots__ = ("t0", "strategy", "fetch_end", "span", "query_id", "resumed", "key")
    t0: float
    strategy: str
    fetch_end: Optional[float]
    span: Any
    query_id: Any
    resumed: bool
    key: int


def _state(q: _AioQuery) -> QueryState:
    """``q`` as the sync hook's functions take it (it has every field they read)."""
    return q  # type: ignore[return-value]


#: The query each async cursor has in flight, by ``id(cursor)``: nothing is stored on the cursor.
#: ``AsyncCursor`` sets 29 attributes of its own, all the inline values CPython 3.11 keeps for
#: it (a class's shared keys hold 30, less one per instance created before a key is added), so
#: one more attribute turns every instrumented cursor's values into a dict at its first query
#: and makes every later attribute access of the connector on it slower (measured with
#: callgrind: +104 000 instructions per async query, +3.5 %). Each entry holds a weak reference
#: to its cursor whose callback removes the entry if the cursor is collected with its query
#: still tracked (the query stays in flight, as a dropped sync cursor's does); the entry, and
#: with it the reference, goes when the query ends. (Ids are unique among live objects, and the
#: callback runs before a collected cursor's id can be reused.)
_queries: dict[int, _AioQuery] = {}


def _forget(ref: _AioQuery) -> None:
    key = ref.key
    if _queries.get(key) is ref:
        del _queries[key]


def _end_failed(ctx: HookContext, cursor: Any, exc: BaseException) -> None:
    """A fetch raised: the cursor's query, if still tracked, ends with ``outcome_of(exc)``."""
    if ctx.live:
        q = _queries.pop(id(cursor), None)
        if q is not None:
            finish(ctx, _state(q), outcome_of(exc), exc)


def _make_execute(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    perf = time.perf_counter
    rec = ctx.recorder
    tokens = rec.in_flight_tokens
    token = ctx.token
    resumed_get = RESUMED.get
    queries = _queries

    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live or (_ctx_now() and _suppressed()):
            return await orig(self, *args, **kwargs)
        span = None
        span_token = None
        conn = None
        try:
            prev = queries.pop(id(self), None)
            if prev is not None:
                finish(ctx, _state(prev), "ok", end=prev.fetch_end)
            conn = self._connection
            try:  # read directly: getattr(obj, name, None) costs ~400 instructions more
                stub_token = conn.__dict__["_client"]._e6observe_token  # MARK
            except (AttributeError, KeyError):  # no connection or stub yet, or an unwrapped stub
                stub_token = None
            if stub_token is not token and conn is not None and conn.__dict__.get("_client") is not None:
                HOOK.wrap_connection(conn)
            tracer = ctx.tracer  # ctx.current_tracer(), inlined
            if tracer is None and ctx.retrace is not None:
                tracer = ctx.retrace()
            if tracer is not None:
                query = args[0] if args else kwargs.get("operation")
                config = conn.__dict__.get("_config", {})
                span = tracer.start(
                    query,
                    config.get("host"),
                    config.get("port"),
                    db_namespace(config.get("catalog"), config.get("database")),
                )
                span_token = attach_span(span)  # this task's context: its RPCs are children
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        resumed0 = resumed_get()
        qs_token = QUERY_SPAN.set(span) if span is not None else None
        t0 = perf()
        try:
            # The connector's call (execute(operation)) forwarded as a plain call: ``orig(self,
            # *args, **kwargs)`` builds a new tuple and dict on every query.
            if len(args) == 1 and not kwargs:
                result = await orig(self, args[0])
            else:
                result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if span_token is not None:
                detach(span_token)
            try:
                if qs_token is not None:
                    QUERY_SPAN.reset(qs_token)
                route = getattr(self, "_route", None)
                admitted = route is not None
                s = (
                    getattr(route, "strategy", None)
                    if admitted
                    else (conn.__dict__.get("_strategy") if conn is not None else None)
                )
                strategy = norm_strategy(s if (not admitted or isinstance(s, str)) else None)
                execute_failed(ctx, t0, strategy, span, None, admitted, exc)
            except Exception as e:
                record_internal_error(_COMPONENT, e)
            raise
        if span_token is not None:
            detach(span_token)
        try:
            if qs_token is not None:
                QUERY_SPAN.reset(qs_token)
            route = self._route
            try:  # read directly (see above); no route: None
                s = route.strategy
            except AttributeError:
                s = None
            try:
                query_id = route.query_id
            except AttributeError:
                query_id = None
            try:  # norm_strategy(s) for a str (else None), inlined for the usual case (a colour)
                strategy = LABEL[s]  # type: ignore[index]  # a non-str key: KeyError or TypeError
            except Exception:
                strategy = norm_strategy(s if isinstance(s, str) else None)
            tokens[strategy].append(None)  # rec.query_started(strategy), inlined
            q = _AioQuery(self, _forget)
            q.t0 = t0
            q.strategy = strategy
            q.fetch_end = None
            q.span = span
            q.query_id = query_id
            q.resumed = resumed_get() is not resumed0
            q.key = key = id(self)
            queries[key] = q
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return result

    execute.__wrapped__ = orig  # type: ignore[attr-defined]
    return execute


def _make_next_batch(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    perf = time.perf_counter
    queries = _queries

    async def _next_batch(self: Any, *args: Any, **kwargs: Any) -> Any:
        q = queries.get(id(self))
        token = attach_span(q.span) if q is not None and q.span is not None else None
        try:
            rows = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if token is not None:
                detach(token)
            _end_failed(ctx, self, exc)
            raise
        if token is not None:
            detach(token)
        # The fetch that returned no more rows: the fetch phase ends. Marked on the query read
        # before the fetch (a cursor runs one query at a time; one that ended meanwhile, or was
        # forgotten by uninstrument(), is out of the map: its mark is never read).
        if rows is None and q is not None and q.fetch_end is None:
            q.fetch_end = perf()
        return rows

    # Connector 3.0.x: ``_next_batch(self, deadline)``, called once per fetched batch. The same
    # wrapper with that one parameter: no argument tuple and dict built on each batch.
    async def _next_batch_deadline(self: Any, deadline: Any) -> Any:
        q = queries.get(id(self))
        token = attach_span(q.span) if q is not None and q.span is not None else None
        try:
            rows = await orig(self, deadline)
        except BaseException as exc:
            if token is not None:
                detach(token)
            _end_failed(ctx, self, exc)
            raise
        if token is not None:
            detach(token)
        if rows is None and q is not None and q.fetch_end is None:  # as above
            q.fetch_end = perf()
        return rows

    exact = positional_params(orig) == ("self", "deadline") and not getattr(orig, "__defaults__", None)
    wrapper = _next_batch_deadline if exact else _next_batch
    wrapper.__wrapped__ = orig  # type: ignore[attr-defined]
    return wrapper


def _make_clear(orig: Callable[..., Any], ctx: HookContext, outcome_ok: str) -> Callable[..., Any]:
    perf = time.perf_counter
    rec = ctx.recorder
    tokens = rec.in_flight_tokens
    query_ok = ctx.query_ok
    inline = outcome_ok == "ok"
    queries = _queries

    async def _clear(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = id(self)
        q: Optional[_AioQuery] = queries.get(key) if ctx.live else None
        token = attach_span(q.span) if q is not None and q.span is not None else None
        try:
            # The connector's call (_clear(deadline)) forwarded as a plain call (no new tuple
            # and dict).
            if len(args) == 1 and not kwargs:
                result = await orig(self, args[0])
            else:
                result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            if token is not None:
                detach(token)
            if q is not None and queries.get(key) is q:
                del queries[key]
                finish(ctx, _state(q), outcome_of(exc), exc)
            raise
        if token is not None:
            detach(token)
        if q is not None and queries.get(key) is q:
            del queries[key]
            if inline and q.span is None and not q.resumed:
                # finish(ctx, q, "ok") for an untraced query, inlined (one call less per query)
                try:
                    seconds = perf() - q.t0
                    strategy = q.strategy
                    try:
                        tokens[strategy].pop()
                    except (KeyError, IndexError):  # started before a fork reset, or unseen
                        pass
                    h = query_ok.get(strategy)
                    if h is None:
                        h = query_ok[strategy] = rec.query_histogram(strategy, "ok")
                    p = h.pending
                    p.append(seconds)
                    if len(p) >= FOLD_AT:
                        h.fold()
                except Exception as e:
                    record_internal_error(_COMPONENT, e)
            else:
                finish(ctx, _state(q), outcome_ok)
        return result

    _clear.__wrapped__ = orig  # type: ignore[attr-defined]
    return _clear


class AioHook(Hook):
    """The async API's hooks: installed now if the application has imported the connector's
    async API, else when it does (a process that never uses it never loads those modules)."""

    name = "aio"

    def __init__(self) -> None:
        super().__init__()
        self.interp: Optional[_AioInterpreter] = None
        self.stubs: weakref.WeakSet[Any] = weakref.WeakSet()

    def apply(self, ctx: HookContext) -> bool:
        if sys.version_info < (3, 11):
            return False
        ctx.use_suppression(globals())  # now, and again when the OpenTelemetry API is imported
        return self.defer(ctx, ASYNC_MODULE, lambda: self._apply_now(ctx))

    def _apply_now(self, ctx: HookContext) -> bool:
        if self.interp is not None or not available():
            return self.interp is not None
        from e6data_python_connector.async_connection import AsyncConnection
        from e6data_python_connector.async_cursor import AsyncCursor

        for name in ("_strategy", "_pending_strategy"):
            if name in AsyncConnection.__dict__:  # a future version made it a class attribute
                return False
        interp = _AioInterpreter(ctx.recorder)
        p = self.patches
        p.replace(AsyncConnection, "_strategy", _Watched("_strategy", interp.on_strategy))
        p.replace(AsyncConnection, "_pending_strategy", _Watched("_pending_strategy", interp.on_pending))
        p.replace(
            AsyncConnection,
            "_initialize",
            _make_initialize(AsyncConnection.__dict__["_initialize"], ctx, interp),
        )
        p.replace(AsyncCursor, "execute", _make_execute(AsyncCursor.__dict__["execute"], ctx))
        p.replace(AsyncCursor, "_clear", _make_clear(AsyncCursor.__dict__["_clear"], ctx, "ok"))
        p.replace(AsyncCursor, "_next_batch", _make_next_batch(AsyncCursor.__dict__["_next_batch"], ctx))
        if "cancel" in AsyncCursor.__dict__:
            p.replace(AsyncCursor, "cancel", _make_clear(AsyncCursor.__dict__["cancel"], ctx, "error"))
        self.interp = interp
        return True

    def removed(self, ctx: HookContext) -> None:
        self.interp = None
        _queries.clear()
        unwrap_all(self.stubs, _COMPONENT)

    def wrap_stub(self, stub: Any, ctx: HookContext, interp: _AioInterpreter) -> bool:
        """Replace the unary multi-callables of one ``grpc.aio`` stub (idempotent)."""
        import grpc.aio

        return wrap_stub(
            stub,
            ctx,
            grpc.aio.UnaryUnaryMultiCallable,
            lambda mc, timer: _timed_aio_call(mc, timer, interp),
            self.stubs,
        )

    def wrap_connection(self, conn: Any) -> bool:
        """Instrument the stub of an already-open ``AsyncConnection``. True if it changed."""
        ctx, interp = self.ctx, self.interp
        if ctx is None or interp is None or not ctx.live:
            return False
        try:
            ctx.track(conn)
            return self.wrap_stub(conn.__dict__.get("_client"), ctx, interp)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
            return False


HOOK = AioHook()
wrap_connection = HOOK.wrap_connection

__all__ = ["HOOK", "AioHook", "wrap_connection", "available"]
