"""Cursor hook (sync API): query duration and outcome, queries in flight, retries, spans.

A query's life, as measured here:

* it **starts** when ``Cursor.execute`` is called; once execute returns it counts as in flight
  under the strategy it is pinned to (the connector's query map entry for its id, written at
  prepare time - read without the connector's lock, a single-key read);
* it **ends** when it is cleared (``Cursor.clear``, and ``Cursor.close`` which calls it) - outcome
  ``ok`` - or when an RPC of it fails (execute, a fetch, the clear): outcome
  ``switch_interrupted`` for a ``status: 456`` on a query that was already admitted under the
  old colour (a switch landed mid-flight), ``error`` otherwise; ``Cursor.cancel`` ends it as
  ``error``;
* a query that is never cleared ends when the same cursor executes the next one; its duration
  then runs to the end of its fetch (the last empty batch) if it was fully fetched, else to that
  next execute. A cursor dropped without clear/close/another execute is never observed and stays
  in ``e6data_queries_in_flight`` - exactly like the connector's own query-map entry, which then
  blocks graceful switches (worth seeing, not hiding).

``execute`` that fails before admission (e.g. a 456 at prepare after the connector's retries)
is observed as ``error`` under the strategy active at the time. The connector's ``re_auth``
replays a whole execute on ``Access denied`` or a 456; each replay calls
``connection.get_re_authenticate_session_id()`` from inside its ``except`` block, which this hook
wraps to report ``recorder.retry(attempt, reason)``. A replayed execute is one query.

Per-cursor state lives in one attribute on the cursor (``_e6observe_query``, None when no query
is tracked). The hot paths read it (and the connector's ``_query_id``, the stub's mark) as plain
attributes with ``except AttributeError`` for a cursor that has not executed since
``instrument()``: a specialised load, where ``getattr(obj, name, None)`` costs ~400 instructions
more (callgrind, Python 3.11) - about 4 000 per query over the dozen reads. It is never read
through the cursor's ``__dict__``: on Python 3.11+ reading an object's ``__dict__`` turns its
inline attribute values into a real dict for good, and every attribute access of the connector
on that cursor gets slower (measured with callgrind: one ``cur.__dict__`` read adds ~105 000
instructions, +6 %, to each later query of the bare connector - more than all of e6observe's
hooks).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

from .._colours import LABEL
from .._otelattrs import db_namespace
from .._otelctx import PendingSpan, attach_span, detach
from .._safe import record_internal_error
from ..recorder import FOLD_AT, norm_strategy
from . import Hook, HookContext, _never_suppressed, outcome_of, retry_reason
from . import channel as _channel
from .cluster import QUERY_SPAN, RESUMED

ATTR = "_e6observe_query"
#: ``object.__new__``: a :class:`QueryState` made on the hot path without its ``__init__``.
new_state = object.__new__
_COMPONENT = "hook.cursor"


#: The installed context's suppression check and context getter (see ``hooks/channel.py``),
#: bound by :class:`CursorHook`'s ``apply`` (again when the OpenTelemetry API is imported).
_suppressed: Callable[[], bool] = _never_suppressed
_ctx_now: Callable[[], Any] = _never_suppressed


class QueryState:
    """One query in flight on a cursor."""

    __slots__ = ("t0", "strategy", "fetch_end", "span", "query_id", "resumed")

    def __init__(self, t0: float, strategy: str, span: Any, query_id: Any, resumed: bool = False) -> None:
        self.t0 = t0
        self.strategy = strategy
        self.fetch_end: Optional[float] = None
        self.span = span
        self.query_id = query_id
        #: Its execute waited for the connector's auto-resume: outcome ``resumed`` if it ends ok.
        self.resumed = resumed


class TracedQueryState(QueryState):
    """A query with a span, and what makes the span current phase by phase (sync cursor).

    ``parent`` is the context execute ran in (the span's parent), ``sctx`` that context with the
    span current: a later phase (fetch, clear) run in the same parent context attaches ``sctx``
    again instead of building a new context, and a call already running inside ``sctx``
    (``fetch_batch`` under ``fetchall``) attaches nothing."""

    __slots__ = ("tracer", "parent", "sctx")

    def __init__(
        self,
        t0: float,
        strategy: str,
        span: Any,
        query_id: Any,
        resumed: bool,
        tracer: Any,
        parent: Any,
        sctx: Any,
    ) -> None:
        # QueryState.__init__, inlined (one call less per traced query)
        self.t0 = t0
        self.strategy = strategy
        self.fetch_end: Optional[float] = None
        self.span = span
        self.query_id = query_id
        self.resumed = resumed
        self.tracer = tracer
        self.parent = parent
        self.sctx = sctx


def _cache() -> dict[str, Any]:
    from e6data_python_connector import e6data_grpc as g

    return g._local_strategy_cache  # type: ignore[no-any-return]


def _pinned_strategy(query_id: Any, cache: Optional[dict[str, Any]] = None) -> str:
    """The strategy the connector pinned ``query_id`` to (else the active one), normalised.

    Reads the query map without the connector's lock: a single-key read. Never raises.
    """
    try:
        if cache is None:
            cache = _cache()
        s = None
        qmap = cache.get("query_strategy_map")
        if query_id and type(qmap) is dict:
            s = qmap.get(query_id)
        if s is None:
            s = cache.get("active_strategy")
        return norm_strategy(s)
    except Exception:
        return "invalid"


def finish(
    ctx: HookContext,
    q: QueryState,
    outcome: str,
    exc: Optional[BaseException] = None,
    end: Optional[float] = None,
) -> None:
    """Record the end of one query (duration, outcome, in-flight, span). Contained."""
    try:
        seconds = (time.perf_counter() if end is None else end) - q.t0
        if outcome == "ok" and q.span is None and not q.resumed:
            # The common end, untraced: rec.query_finished(q.strategy, "ok", seconds), inlined.
            strategy = q.strategy
            rec = ctx.recorder
            try:
                rec.in_flight_tokens[strategy].pop()
            except (KeyError, IndexError):  # started before a fork reset, or unseen
                pass
            h = ctx.query_ok.get(strategy)
            if h is None:
                h = ctx.query_ok[strategy] = rec.query_histogram(strategy, "ok")
            p = h.pending
            p.append(seconds)
            if len(p) >= FOLD_AT:
                h.fold()
            return
        if outcome == "ok" and q.resumed:
            outcome = "resumed"
        tracer = ctx.tracer
        span = q.span
        if tracer is None or span is None:
            ctx.recorder.query_finished(q.strategy, outcome, seconds)
            return
        strategy = q.strategy
        rec = ctx.recorder
        if span.__class__ is PendingSpan:  # deferred: the span thread sets the exemplar
            try:
                rec.in_flight_tokens[strategy].pop()
            except (KeyError, IndexError):
                pass
            h = ctx.query_ok.get(strategy) if outcome == "ok" else None
            if h is None:
                h = rec.query_histogram(strategy, outcome)
                if outcome == "ok":
                    ctx.query_ok[strategy] = h
            p = h.pending
            p.append(seconds)
            if len(p) >= FOLD_AT:
                h.fold()
            tracer.finish(span, strategy, outcome, exc, h, seconds)
            return
        if outcome == "ok":  # rec.query_finished(strategy, "ok", ...), the child pre-bound
            try:
                rec.in_flight_tokens[strategy].pop()
            except (KeyError, IndexError):
                pass
            h = ctx.query_ok.get(strategy)
            if h is None:
                h = ctx.query_ok[strategy] = rec.query_histogram(strategy, "ok")
            h.observe(seconds, tracer.exemplar(span))
        else:
            rec.query_finished(strategy, outcome, seconds, tracer.exemplar(span))
        tracer.finish(span, strategy, outcome, exc)
    except Exception as e:
        record_internal_error(_COMPONENT, e)


def execute_failed(
    ctx: HookContext, t0: float, strategy: str, span: Any, query_id: Any, admitted: bool, exc: BaseException
) -> None:
    """An ``execute`` raised (sync or async): the query starts and ends at once, as
    ``switch_interrupted`` for a 456 once it was admitted (a switch landed mid-flight), else
    ``error``."""
    outcome = outcome_of(exc) if admitted else "error"
    ctx.recorder.query_started(strategy)
    finish(ctx, QueryState(t0, strategy, span, query_id), outcome, exc)


def _operation(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("operation")


def _make_execute(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    from e6data_python_connector import e6data_grpc as g

    perf = time.perf_counter
    rec = ctx.recorder
    tls = ctx.tls
    token = ctx.token
    tokens = rec.in_flight_tokens
    resumed_get = RESUMED.get

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live or (_ctx_now() and _suppressed()):
            return orig(self, *args, **kwargs)
        span = None
        span_token = None
        before = None
        try:
            # Attributes are read directly, a missing one caught (see the module docstring)
            try:
                prev = self._e6observe_query  # ATTR
            except AttributeError:
                prev = None
            if prev is not None:  # the previous query was never cleared: it ends now
                self._e6observe_query = None
                finish(ctx, prev, "ok", end=prev.fetch_end)
            conn = self.connection
            try:
                stub_token = conn._client._e6observe_token  # _channel.MARK
            except AttributeError:  # no stub yet, or one built before instrument()
                stub_token = None
            if stub_token is not token and getattr(conn, "_client", None) is not None:
                _channel.HOOK.wrap_connection(conn)
            tls.attempt = 0
            try:
                before = self._query_id
            except AttributeError:
                before = None
            tracer = ctx.tracer
            if tracer is None and ctx.retrace is not None:
                tracer = ctx.retrace()
            if tracer is not None:
                parent = tracer.current()
                catalog = getattr(self, "_catalog_name", None)
                database = getattr(self, "_database", None)
                span = tracer.start(
                    _operation(args, kwargs),
                    getattr(conn, "_host", None),
                    getattr(conn, "_port", None),
                    db_namespace(catalog, database) if (catalog or database) else None,
                    parent,
                )
                if not tracer.deferred:  # deferred: a PendingSpan, never made current
                    sctx = tracer.in_context(span, parent)
                    span_token = tracer.attach(sctx)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        resumed0 = resumed_get()
        qs_token = QUERY_SPAN.set(span) if span is not None else None
        t0 = perf()
        try:
            # ``execute(operation)``, the usual call, forwarded as a plain call: ``*args,
            # **kwargs`` goes through CALL_FUNCTION_EX (~1 400 instructions more, callgrind).
            result = orig(self, args[0]) if len(args) == 1 and not kwargs else orig(self, *args, **kwargs)
        except BaseException as exc:
            if span_token is not None:
                try:
                    tracer.reset(span_token)
                except Exception:  # a token from another context: ignored, as detach does
                    pass
            try:
                if qs_token is not None:
                    QUERY_SPAN.reset(qs_token)
                qid = getattr(self, "_query_id", None)  # a failure: the direct read saves nothing
                admitted = qid is not None and qid != before
                execute_failed(ctx, t0, _pinned_strategy(qid if admitted else None), span, qid, admitted, exc)
            except Exception as e:
                record_internal_error(_COMPONENT, e)
            raise
        if span_token is not None:
            try:
                tracer.reset(span_token)
            except Exception:
                pass
        try:
            if qs_token is not None:
                QUERY_SPAN.reset(qs_token)
            try:
                qid = self._query_id
            except AttributeError:
                qid = None
            # _pinned_strategy(qid), inlined for the usual case (a colour, pinned by id)
            cache = g._local_strategy_cache
            qmap = cache.get("query_strategy_map")
            s = qmap.get(qid) if (qid and type(qmap) is dict) else None
            colour = LABEL.get(s) if type(s) is str else None
            strategy = colour if colour is not None else _pinned_strategy(qid, cache)
            tokens[strategy].append(None)  # rec.query_started(strategy), inlined
            if span_token is None:
                # QueryState(t0, strategy, span, qid, resumed), without running its __init__:
                # from C code (type_call) that is a second interpreter frame, ~1 000
                # instructions more than these stores into its slots.
                q = new_state(QueryState)
                q.t0 = t0
                q.strategy = strategy
                q.fetch_end = None
                q.span = span
                q.query_id = qid
                q.resumed = resumed_get() is not resumed0
                self._e6observe_query = q  # ATTR
            else:  # a span, made current: phases make it current again through its state
                resumed = resumed_get() is not resumed0
                setattr(self, ATTR, TracedQueryState(t0, strategy, span, qid, resumed, tracer, parent, sctx))
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return result

    execute.__wrapped__ = orig  # type: ignore[attr-defined]
    return execute


def call_in_span(
    q: Any, orig: Callable[..., Any], self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``orig(self, *args, **kwargs)`` with ``q``'s span current (its RPCs' spans are its
    children): attached once per phase - nothing to do when it is current already."""
    if type(q) is not TracedQueryState:
        if q.span.__class__ is PendingSpan:  # deferred: nothing is made current
            return orig(self, *args, **kwargs)
        token = attach_span(q.span)
        try:
            return orig(self, *args, **kwargs)
        finally:
            detach(token)
    tracer = q.tracer
    token = None
    try:
        now = tracer.current()
        if now is not q.sctx:  # else a call inside a phase (fetch_batch under fetchall)
            # in the context it was started in: its context again; else the span in this one
            token = tracer.attach(q.sctx if now is q.parent else tracer.in_context(q.span, now))
    except Exception:
        pass
    if token is None:
        return orig(self, *args, **kwargs)
    try:
        return orig(self, *args, **kwargs)
    finally:
        try:
            tracer.reset(token)
        except Exception:
            pass


def end_failed(
    ctx: HookContext, cursor: Any, exc: BaseException, classify: Callable[[BaseException], str]
) -> None:
    """A fetch raised: the cursor's query, if still tracked, ends with ``classify(exc)``."""
    if ctx.live:
        q = getattr(cursor, ATTR, None)
        if q is not None:
            setattr(cursor, ATTR, None)
            finish(ctx, q, classify(exc), exc)


def positional_params(fn: Any) -> Optional[tuple[str, ...]]:
    """The parameter names of a plain Python function taking positional parameters only (no
    ``*args``, ``**kwargs`` or keyword-only ones), else None. Read from its code object: no
    ``inspect`` at install time."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_flags & 0x0C or code.co_kwonlyargcount:  # CO_VARARGS|CO_VARKEYWORDS
        return None
    return tuple(code.co_varnames[: code.co_argcount])


# The fetch wrappers below come in the connector's own signature when it matches
# (``fetch_batch(self)``, ``_fetch_all(self)`` in 3.0.x; the async hook's ``_next_batch`` does
# the same) and a generic ``*args, **kwargs`` form otherwise: forwarding ``*args, **kwargs``
# builds a tuple and a dict and calls through ``CALL_FUNCTION_EX``, ~1 400 instructions more per
# call than a plain call (callgrind, Python 3.11). The bodies are the same but for that; kept
# written out on purpose. A deferred query's span (``query_spans="deferred"``, a PendingSpan)
# is never made current: its calls take the plain branch, as an untraced query's do.


def _make_fetch(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    perf = time.perf_counter

    if positional_params(orig) == ("self",):

        def fetch_self(self: Any) -> Any:
            try:
                q = self._e6observe_query  # ATTR, read directly (see the module docstring)
            except AttributeError:
                q = None
            try:
                if q is None or q.span is None or q.span.__class__ is PendingSpan:
                    rows = orig(self)
                else:
                    rows = call_in_span(q, orig, self, (), {})
            except BaseException as exc:
                end_failed(ctx, self, exc, outcome_of)
                raise
            if rows is None and ctx.live:  # no more rows: the fetch phase ends (once per query)
                q = getattr(self, ATTR, None)
                if q is not None and q.fetch_end is None:
                    q.fetch_end = perf()
            return rows

        fetch_self.__wrapped__ = orig  # type: ignore[attr-defined]
        return fetch_self

    def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        q = getattr(self, ATTR, None)
        try:
            if q is None or q.span is None or q.span.__class__ is PendingSpan:
                rows = orig(self, *args, **kwargs)
            else:
                rows = call_in_span(q, orig, self, args, kwargs)
        except BaseException as exc:
            end_failed(ctx, self, exc, outcome_of)
            raise
        if rows is None and ctx.live:  # no more rows: the fetch phase ends (once per query)
            q = getattr(self, ATTR, None)
            if q is not None and q.fetch_end is None:
                q.fetch_end = perf()
        return rows

    fetch.__wrapped__ = orig  # type: ignore[attr-defined]
    return fetch


def _make_fetch_failure(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    if positional_params(orig) == ("self",):

        def fetch_self(self: Any) -> Any:
            try:
                q = self._e6observe_query  # ATTR, read directly (see the module docstring)
            except AttributeError:
                q = None
            try:
                if q is None or q.span is None or q.span.__class__ is PendingSpan:
                    return orig(self)
                return call_in_span(q, orig, self, (), {})
            except BaseException as exc:
                end_failed(ctx, self, exc, outcome_of)
                raise

        fetch_self.__wrapped__ = orig  # type: ignore[attr-defined]
        return fetch_self

    def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        q = getattr(self, ATTR, None)
        try:
            if q is None or q.span is None or q.span.__class__ is PendingSpan:
                return orig(self, *args, **kwargs)
            return call_in_span(q, orig, self, args, kwargs)
        except BaseException as exc:
            end_failed(ctx, self, exc, outcome_of)
            raise

    fetch.__wrapped__ = orig  # type: ignore[attr-defined]
    return fetch


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("query_id")


def _make_clear(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    perf = time.perf_counter
    rec = ctx.recorder
    tokens = rec.in_flight_tokens
    ok = ctx.query_ok
    fold_at = FOLD_AT

    def clear(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live:
            return orig(self, *args, **kwargs)
        q: Optional[QueryState]
        try:
            q = self._e6observe_query  # ATTR, read directly (see the module docstring)
        except AttributeError:
            q = None
        if q is not None and (args or kwargs):
            target = _target(args, kwargs)
            if target and target != q.query_id:
                q = None  # clearing some other query id: not this cursor's query
        try:
            if q is None or q.span is None or q.span.__class__ is PendingSpan:
                # ``clear()``, the usual call, forwarded as a plain call (see execute)
                response = orig(self) if not (args or kwargs) else orig(self, *args, **kwargs)
            else:
                response = call_in_span(q, orig, self, args, kwargs)
        except BaseException as exc:
            now: Optional[QueryState] = getattr(self, ATTR, None)
            if now is q and q is not None:
                setattr(self, ATTR, None)
                finish(ctx, q, outcome_of(exc), exc)
            raise
        if q is None:
            return response
        try:
            now = self._e6observe_query
        except AttributeError:  # forgotten meanwhile (uninstrument())
            now = None
        if now is q:
            self._e6observe_query = None
            if q.span is not None or q.resumed:
                finish(ctx, q, "ok")
            else:  # finish(ctx, q, "ok") for an untraced query, inlined (sync: no extra call)
                try:
                    seconds = perf() - q.t0
                    strategy = q.strategy
                    try:
                        tokens[strategy].pop()
                    except (KeyError, IndexError):  # started before a fork reset, or unseen
                        pass
                    h = ok.get(strategy)
                    if h is None:
                        h = ok[strategy] = rec.query_histogram(strategy, "ok")
                    p = h.pending
                    p.append(seconds)
                    if len(p) >= fold_at:
                        h.fold()
                except Exception as e:
                    record_internal_error(_COMPONENT, e)
        return response

    clear.__wrapped__ = orig  # type: ignore[attr-defined]
    return clear


def _make_cancel(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def cancel(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live:
            return orig(self, *args, **kwargs)
        q: Optional[QueryState] = getattr(self, ATTR, None)
        if q is not None:
            target = _target(args, kwargs)
            if target and target != q.query_id:
                q = None
        try:
            return orig(self, *args, **kwargs)
        finally:
            now: Optional[QueryState] = getattr(self, ATTR, None)
            if now is q and q is not None:
                setattr(self, ATTR, None)
                finish(ctx, q, "error", sys.exc_info()[1] or _Cancelled())

    cancel.__wrapped__ = orig  # type: ignore[attr-defined]
    return cancel


class _Cancelled(Exception):
    """Stands for "cancelled by the application" in span ``error.type``."""


def _make_reauth(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    rec = ctx.recorder
    tls = ctx.tls

    def get_re_authenticate_session_id(self: Any, *args: Any, **kwargs: Any) -> Any:
        if ctx.live:
            try:
                # re_auth calls this from inside its ``except`` block: the error being handled
                # is the reason for the replay. Called any other way, it is not a retry.
                exc = sys.exc_info()[1]
                if exc is not None:
                    attempt = getattr(tls, "attempt", 0) + 1
                    tls.attempt = attempt
                    rec.retry(attempt, retry_reason(exc))
            except Exception as e:
                record_internal_error(_COMPONENT, e)
        return orig(self, *args, **kwargs)

    get_re_authenticate_session_id.__wrapped__ = orig  # type: ignore[attr-defined]
    return get_re_authenticate_session_id


class CursorHook(Hook):
    """Patches ``Cursor.execute/clear/cancel/fetch_batch`` and the re-auth used by retries."""

    name = "cursor"

    def apply(self, ctx: HookContext) -> bool:
        from e6data_python_connector import e6data_grpc as g

        cur = g.Cursor
        p = self.patches
        ctx.use_suppression(globals())  # now, and again when the OpenTelemetry API is imported
        p.replace(cur, "execute", _make_execute(cur.__dict__["execute"], ctx))
        p.replace(cur, "clear", _make_clear(cur.__dict__["clear"], ctx))
        if "cancel" in cur.__dict__:
            p.replace(cur, "cancel", _make_cancel(cur.__dict__["cancel"], ctx))
        # fetch_batch is the one v1 fetch path (fetchone/fetchmany/fetchall/fetchall_buffer all
        # reach it); 3.0.1+ v2 results go through _next_result_chunk.
        for name in ("fetch_batch", "_next_result_chunk"):
            if name in cur.__dict__:
                p.replace(cur, name, _make_fetch(cur.__dict__[name], ctx))
        # The result-contract paths (OAuth / v2) can fail in fetchall/fetchmany before any batch
        # is requested ("Connection is closed." after a flip): those end the query too.
        for name in ("_fetch_all", "fetchmany"):
            if name in cur.__dict__:
                p.replace(cur, name, _make_fetch_failure(cur.__dict__[name], ctx))
        reauth = g.Connection.__dict__.get("get_re_authenticate_session_id")
        if reauth is not None:
            p.replace(g.Connection, "get_re_authenticate_session_id", _make_reauth(reauth, ctx))
        return True


HOOK = CursorHook()
