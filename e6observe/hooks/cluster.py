"""Cluster hook: auto-resume, the cluster manager's own strategy cache and channel, connection-
scoped re-routes (OAuth), and strategy values the connector refuses.

What the connector does (3.0.2; see ../shared/connector-notes.md) and what is patched for it:

* **Auto-resume.** A login (sync, password) or a prepare (sync OAuth, async) that fails with
  ``UNAVAILABLE`` ``status: 503`` makes the connector build a cluster manager and call its
  ``resume()``: ``cluster_manager.ClusterManager.resume`` (sync) and
  ``async_cluster_manager.AsyncClusterManager.resume`` (async) are wrapped, class attributes,
  so every caller's import of the class sees them. Each call is one
  :meth:`~e6observe.recorder.Recorder.resume_begin` / ``resume_end`` pair; overlapping calls
  (many threads or connections waiting for one cluster) share one episode and count once.
  The outcome: ``ok`` when ``resume()`` returned true; ``timeout`` when the connector's own
  budget ran out (sync: ``False`` past its ``_timeout``; OAuth/async: ``TimeoutError`` or
  ``DEADLINE_EXCEEDED`` underneath); ``failed`` otherwise. The exception, if any, is the
  connector's own object, re-raised.
* **The cluster manager's channel.** Its stubs are ``cluster_pb2_grpc.ClusterServiceStub``,
  built per access; the stub class's ``__init__`` is wrapped so each new stub's unary
  multi-callables are timed into ``e6data_rpc_duration_seconds`` as ``cluster.status``,
  ``cluster.resume``, ``cluster.suspend`` (a 456 is a mismatch, as on the engine), and the
  statuses it answers become the recorder's last seen cluster status.
* **The cluster manager's cache** (``strategy._local_strategy_cache``, "cache B": only
  ``cluster_manager`` reads and writes it, through functions it imported by name): the module
  global is replaced by the strategy-cache hook's :class:`ObservedCache`, reporting with
  ``scope="cluster_manager"``: a colour change is a scoped switch, a pending colour an
  ``announced``, a ``None`` write a ``cache_cleared``. The process cache is not touched.
* **Connection-scoped re-routes** (sync OAuth, 3.0.x): after a 456 at prepare the connector
  re-routes that connection only, in ``Connection._oauth_resume_strategy``; a class-level
  data descriptor reports a change to a colour other than the one the process cache holds as
  one switch with ``scope="connection"``. A later process switch to the same colour is the
  process's own (scope ``process``); re-assigning the same route counts nothing.
* **Refused strategy values.** ``e6data_grpc._set_pending_strategy`` (a module global, which
  the connector's own calls go through) is wrapped: a value that is not exactly ``blue`` or
  ``green`` after the connector's ``lower()`` is refused by the connector (and a login that
  keeps receiving it recurses until ``RecursionError``); it is reported as
  ``strategy_rejected`` with a bounded reason, before the connector goes on.

Queries: a ``resume()`` call marks :data:`RESUMED` (a context variable) so the cursor hooks
label the query that waited ``resumed``, and, when the query has a span (:data:`QUERY_SPAN`),
the wait becomes a child span ``e6data.cluster.resume``.
"""

from __future__ import annotations

import contextvars
import sys
import time
from functools import partial
from typing import Any, Callable, Optional

import grpc

from .. import metrics as M
from .._colours import COLOURS
from .._safe import record_internal_error
from ..recorder import Recorder, norm_strategy
from . import Hook, HookContext
from .strategy_cache import ObservedCache
from .stubs import Timer, aio_call_done, aio_status_codes, strategy_from, timer_for

_COMPONENT = "hook.cluster"
#: Longest strategy value the connector could mean; longer ones are "oversized".
MAX_STRATEGY_CHARS = 64
#: Set (to a fresh object) by every ``resume()`` call that returned true: the cursor hooks
#: compare it before and after ``execute`` to tell a query that waited for a resume.
RESUMED: contextvars.ContextVar[Optional[object]] = contextvars.ContextVar("e6observe_resumed", default=None)
#: The span of the query being executed in this context (only while tracing).
QUERY_SPAN: contextvars.ContextVar[Any] = contextvars.ContextVar("e6observe_query_span", default=None)
ASYNC_MODULE = "e6data_python_connector.async_cluster_manager"


def rejected_reason(value: object) -> Optional[str]:
    """Why the connector refuses ``value`` as a strategy (None if it accepts it)."""
    if not isinstance(value, str):
        return "not_text"
    if len(value) > MAX_STRATEGY_CHARS:
        return "oversized"
    low = value.lower()
    if low in COLOURS:
        return None
    return "padded" if low.strip() in COLOURS else "unknown"


# -- the cluster manager's channel -----------------------------------------------------------
def _timer(ctx: HookContext, name: str) -> Timer:
    return timer_for(ctx, "cluster." + name)


def _seen_status(rec: Recorder, response: Any) -> None:
    status = getattr(response, "status", None)
    if isinstance(status, str):
        rec.cluster_status_seen(status)


def _timed_sync(mc: Any, timer: Timer, ctx: HookContext, observe: bool) -> Callable[..., Any]:
    perf = time.perf_counter

    def call(request: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live:
            return mc(request, *args, **kwargs)
        s = strategy_from(args, kwargs)
        t0 = perf()
        try:
            response = mc(request, *args, **kwargs)
        except grpc.RpcError as exc:
            timer.failed_exc(exc, perf() - t0, s)
            raise
        timer.observe_ok(s, perf() - t0)
        if observe:
            try:
                _seen_status(ctx.recorder, response)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return response

    call.__wrapped__ = mc  # type: ignore[attr-defined]
    return call


def _timed_aio(mc: Any, timer: Timer, ctx: HookContext) -> Callable[..., Any]:
    codes = aio_status_codes()

    def call(request: Any, *args: Any, **kwargs: Any) -> Any:
        s = strategy_from(args, kwargs)
        t0 = time.perf_counter()
        c = mc(request, *args, **kwargs)
        if not ctx.live:
            return c
        try:
            c.add_done_callback(partial(aio_call_done, timer, None, s, t0, codes, _COMPONENT))
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        return c

    call.__wrapped__ = mc  # type: ignore[attr-defined]
    return call


def _make_stub_init(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        if not ctx.live:
            return
        try:
            attrs = vars(self)
            for name, mc in list(attrs.items()):
                if isinstance(mc, grpc.UnaryUnaryMultiCallable):
                    attrs[name] = _timed_sync(
                        mc, _timer(ctx, name), ctx, observe=name in ("status", "resume")
                    )
                elif _is_aio_multicallable(mc):
                    attrs[name] = _timed_aio(mc, _timer(ctx, name), ctx)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    __init__.__wrapped__ = orig  # type: ignore[attr-defined]
    return __init__


def _is_aio_multicallable(mc: Any) -> bool:
    aio = sys.modules.get("grpc.aio")
    cls = getattr(aio, "UnaryUnaryMultiCallable", None) if aio is not None else None
    return cls is not None and isinstance(mc, cls)


# -- resume ----------------------------------------------------------------------------------
def _is_timeout(exc: Optional[BaseException]) -> bool:
    for _ in range(4):
        if exc is None:
            return False
        if isinstance(exc, TimeoutError):
            return True
        try:
            if getattr(exc.code(), "name", None) == "DEADLINE_EXCEEDED":  # type: ignore[attr-defined]
                return True
        except Exception:
            pass
        exc = exc.__cause__ or exc.__context__
    return False


class _ResumeCall:
    """One ``resume()`` call as the wrappers see it (sync and async share it)."""

    __slots__ = ("ctx", "ep", "span", "tracer", "sync")

    def __init__(self, ctx: HookContext, sync: bool = True) -> None:
        self.ctx = ctx
        self.sync = sync
        self.ep: Any = None
        self.span: Any = None
        self.tracer: Any = None
        try:
            self.ep = ctx.recorder.resume_begin()
            parent = QUERY_SPAN.get()
            if parent is not None:
                tracer = ctx.current_tracer()
                if tracer is not None and hasattr(tracer, "child_span"):
                    self.tracer = tracer
                    self.span = tracer.child_span(parent, "e6data.cluster.resume")
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def end(self, outcome: str, exc: Optional[BaseException] = None) -> None:
        try:
            rec = self.ctx.recorder
            if self.ep is not None:
                rec.resume_end(self.ep, outcome)
            if outcome == "ok":
                RESUMED.set(object())
                attempt = 1
                if self.sync:  # the cursor hook's per-execute attempt count (thread-local)
                    tls = self.ctx.tls
                    attempt = getattr(tls, "attempt", 0) + 1
                    tls.attempt = attempt
                rec.retry(attempt, "resume")  # the connector replays the login / prepare
            if self.span is not None:
                self.tracer.end_child_span(
                    self.span, {"e6data.cluster.resume.outcome": outcome}, exc if outcome != "ok" else None
                )
        except Exception as e:
            record_internal_error(_COMPONENT, e)


def _make_resume(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live:
            return orig(self, *args, **kwargs)
        call = _ResumeCall(ctx)
        try:
            result = orig(self, *args, **kwargs)
        except BaseException as exc:
            call.end("timeout" if _is_timeout(exc) else "failed", exc)
            raise
        if result:
            call.end("ok")
        else:
            timeout = getattr(self, "_timeout", None)
            timed_out = isinstance(timeout, (int, float)) and time.time() > timeout
            call.end("timeout" if timed_out else "failed")
        return result

    resume.__wrapped__ = orig  # type: ignore[attr-defined]
    return resume


def _make_aio_resume(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    async def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ctx.live:
            return await orig(self, *args, **kwargs)
        call = _ResumeCall(ctx, sync=False)
        try:
            result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            call.end("timeout" if _is_timeout(exc) else "failed", exc)
            raise
        call.end("ok" if result else "failed")
        return result

    resume.__wrapped__ = orig  # type: ignore[attr-defined]
    return resume


def _make_aio_request(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    async def _request(self: Any, client: Any, operation: Any, *args: Any, **kwargs: Any) -> Any:
        response = await orig(self, client, operation, *args, **kwargs)
        if ctx.live:
            try:
                _seen_status(ctx.recorder, response)
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return response

    _request.__wrapped__ = orig  # type: ignore[attr-defined]
    return _request


# -- the cluster manager's cache (cache B) ----------------------------------------------------
class _ScopedInterpreter:
    """Cache writes of the cluster manager's own cache -> events with ``scope``."""

    __slots__ = ("rec", "scope", "known")

    def __init__(self, rec: Recorder, scope: str) -> None:
        self.rec = rec
        self.scope = scope
        self.known: Optional[str] = None

    def on_write(self, cache: dict[str, Any], key: str, old: object, new: object) -> None:
        try:
            rec, scope = self.rec, self.scope
            if key == "pending_strategy":
                if new:
                    rec.announced(norm_strategy(new), scope=scope)
                return
            if not new:
                if old:
                    rec.cache_cleared(norm_strategy(old), scope=scope)
                return
            to = norm_strategy(new)
            ref, self.known = self.known, to
            if ref is None:
                rec.detected(to, scope=scope)
            elif ref != to:
                cause = "announced" if cache.get("pending_strategy") == new else "mismatch"
                rec.applied(ref, to, cause, scope=scope)
            else:
                rec._scoped_colour(scope, to)  # re-learned after a clear
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)


def _install_cache_b(rec: Recorder) -> Optional[tuple[Any, dict[str, Any], ObservedCache]]:
    """Observe the cluster manager's cache; returns (module, its dict, ours), or None."""
    from e6data_python_connector import strategy as sm

    original = getattr(sm, "_local_strategy_cache", None)
    if not isinstance(original, dict) or getattr(sm, "_shared_strategy", None) is not None:
        return None  # a Manager proxy (connector < 2.3.9) or changed: not observed
    ours = original if isinstance(original, ObservedCache) else ObservedCache(original)
    interp = _ScopedInterpreter(rec, "cluster_manager")
    active = dict.get(ours, "active_strategy")
    if active in COLOURS:  # known already: the gauge shows it (no event: nothing happened)
        interp.known = active
        rec._scoped_colour("cluster_manager", active)
    ours._e6observe = interp
    sm._local_strategy_cache = ours
    return sm, original if original is not ours else dict(ours), ours


def _uninstall_cache_b(cache_b: tuple[Any, dict[str, Any], ObservedCache]) -> None:
    sm, original, ours = cache_b
    ours._e6observe = None
    if sm._local_strategy_cache is ours:
        original.clear()
        original.update(dict(ours))
        sm._local_strategy_cache = original


# -- connection-scoped routes (sync OAuth) -----------------------------------------------------
class _RouteWatch:
    """Data descriptor on ``Connection._oauth_resume_strategy`` reporting route changes."""

    def __init__(self, ctx: HookContext) -> None:
        self.ctx = ctx

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__["_oauth_resume_strategy"]
        except KeyError:
            raise AttributeError("_oauth_resume_strategy") from None

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        old = d.get("_oauth_resume_strategy")
        d["_oauth_resume_strategy"] = value
        ctx = self.ctx
        if not ctx.live or value == old or value not in COLOURS:
            return
        try:
            rec = ctx.recorder
            frm = old if old in COLOURS else (rec.active or "none")
            if frm != value:
                rec.applied(frm, value, "mismatch", scope="connection")
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop("_oauth_resume_strategy", None)


# -- refused strategy values -------------------------------------------------------------------
def _make_set_pending(orig: Callable[..., Any], ctx: HookContext) -> Callable[..., Any]:
    def _set_pending_strategy(strategy: Any, *args: Any, **kwargs: Any) -> Any:
        if strategy and ctx.live:
            try:
                reason = rejected_reason(strategy)
                if reason is not None:
                    ctx.recorder.strategy_rejected(reason)
            except RecursionError:
                raise  # the connector's own recursion reached us: what it raises anyway
            except Exception as exc:
                record_internal_error(_COMPONENT, exc)
        return orig(strategy, *args, **kwargs)

    _set_pending_strategy.__wrapped__ = orig  # type: ignore[attr-defined]
    return _set_pending_strategy


# -- gauges: last seen cluster status, the cluster manager's cache, the split ------------------
def gauge_values(rec: Recorder) -> dict[str, list[tuple[float, dict[str, str]]]]:
    """``prom_name -> [(value, labels)]`` of the cluster gauges, read from the recorder."""
    status = rec.cluster_status
    cm = rec.cluster_manager_active
    active = rec.active
    split = 1.0 if (cm in COLOURS and active in COLOURS and cm != active) else 0.0
    return {
        M.CLUSTER_STATUS.prom_name: [
            (1.0 if s == status else 0.0, {"status": s}) for s in M.CLUSTER_STATUSES
        ],
        M.CLUSTER_MANAGER_ACTIVE.prom_name: [
            (1.0 if s == cm else 0.0, {"strategy": s}) for s in M.STRATEGIES
        ],
        M.CACHE_SPLIT.prom_name: [(split, {})],
    }


# -- install -----------------------------------------------------------------------------------
class ClusterHook(Hook):
    """Patches the cluster manager (sync, and async once imported), its stub class, cache B,
    the OAuth route attribute and ``_set_pending_strategy``. Not applicable without the
    connector's cluster manager."""

    name = "cluster"

    def __init__(self) -> None:
        super().__init__()
        self.cache_b: Optional[tuple[Any, dict[str, Any], ObservedCache]] = None

    def apply(self, ctx: HookContext) -> bool:
        from e6data_python_connector import e6data_grpc as g

        p = self.patches
        try:
            from e6data_python_connector import cluster_manager as cm
            from e6data_python_connector.cluster_server import cluster_pb2_grpc as cpg
        except ImportError:
            return False
        stub_init = cpg.ClusterServiceStub.__dict__.get("__init__")
        if stub_init is not None:
            p.replace(cpg.ClusterServiceStub, "__init__", _make_stub_init(stub_init, ctx))
        resume = cm.ClusterManager.__dict__.get("resume")
        if resume is not None:
            p.replace(cm.ClusterManager, "resume", _make_resume(resume, ctx))
        setp = g.__dict__.get("_set_pending_strategy")
        if callable(setp):
            p.replace(g, "_set_pending_strategy", _make_set_pending(setp, ctx))
        if (
            "_prepare_with_auto_resume" in g.Cursor.__dict__
            and "_oauth_resume_strategy" not in g.Connection.__dict__
        ):
            p.replace(g.Connection, "_oauth_resume_strategy", _RouteWatch(ctx))
        try:
            self.cache_b = _install_cache_b(ctx.recorder)
        except Exception as exc:
            record_internal_error(_COMPONENT, exc)
        if sys.version_info >= (3, 11):
            self.defer(ctx, ASYNC_MODULE, lambda: self._apply_async(ctx))
        return True

    def _apply_async(self, ctx: HookContext) -> bool:
        mod = sys.modules.get(ASYNC_MODULE)
        cls = getattr(mod, "AsyncClusterManager", None)
        if cls is None:
            return False
        p = self.patches
        if "resume" in cls.__dict__:
            p.replace(cls, "resume", _make_aio_resume(cls.__dict__["resume"], ctx))
        if "_request" in cls.__dict__:
            p.replace(cls, "_request", _make_aio_request(cls.__dict__["_request"], ctx))
        return True

    def removed(self, ctx: HookContext) -> None:
        cache_b, self.cache_b = self.cache_b, None
        if cache_b is not None:
            _uninstall_cache_b(cache_b)


HOOK = ClusterHook()

__all__ = ["HOOK", "ClusterHook", "rejected_reason", "RESUMED", "QUERY_SPAN", "MAX_STRATEGY_CHARS"]
